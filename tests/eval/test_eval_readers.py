"""Each benchmark's reader on its published layout: samples, prompts as lmms-eval writes them, bad records."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import EXPECTED, SRT, write_mvbench

from hieravid.eval import get_task
from hieravid.eval.videomme import parse_srt, subtitle_text
from hieravid.video import read_video


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_reads_its_fixture(name, data_root, toy_wups):
    samples = get_task(name).load(data_root)
    read, broken = EXPECTED[name]
    assert len(samples) == read
    assert len({s.id for s in samples}) == read
    missing_video = [s for s in samples if s.error is None and not Path(s.video).is_file()]
    bad_video = [s for s in samples if s.error is None and Path(s.video).is_file() and Path(s.video).stat().st_size < 100]
    assert len([s for s in samples if s.error]) + len(missing_video) + len(bad_video) == broken


def test_mvbench_prompt_answer_and_video_places(data_root):
    samples = {s.id: s for s in get_task("mvbench").load(data_root)}
    first = samples["action_antonym/0"]
    assert first.question == (
        "Question:What is the action performed by the person in the video?\nOption:\n"
        "(A) pulling something\n(B) pushing something\n(C) not sure\nOnly give the best option.\n"
    )
    assert first.answer == "B" and first.meta["group"] == "action_antonym"
    assert first.video.endswith("mvbench/video/ssv2_video_mp4/1001.webm.mp4")
    assert samples["action_count/0"].video.endswith("mvbench/perception/videos/p1.mp4")
    assert "not one of the candidates" in samples["action_count/1"].error
    assert get_task("mvbench").score(first, "(B) pushing").value == 1.0
    assert get_task("mvbench").score(first, "A").value == 0.0
    assert get_task("mvbench").score(first, "pushing").failure is not None


def test_egoschema_prompt_and_answer(data_root):
    samples = get_task("egoschema").load(data_root)
    first = samples[0]
    assert first.question == (
        "What is c doing overall 0?\nA. option text 0\nB. option text 1\nC. option text 2\nD. option text 3\n"
        "E. option text 4\nAnswer with the option's letter from the given choices directly."
    )
    assert first.answer == 3
    assert get_task("egoschema").score(first, "D.").value == 1.0
    assert "not in questions.json" in samples[2].error


def test_nextqa_mc_counts_tp_questions_as_tn(tmp_path):
    """NExT-QA's own evaluation groups its previous (TP) and next (TN) temporal questions as one type, TN,
    in the multiple-choice task as in the open-ended one."""
    import csv

    mc = tmp_path / "nextqa" / "mc"
    mc.mkdir(parents=True)
    with open(mc / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"])
        for qid, kind in enumerate(["TP", "TN", "CW"]):
            w.writerow(["4010069381", 8, 168, 112, "what happens", 0, qid, kind, "a", "b", "c", "d", "e"])
    assert [s.meta["group"] for s in get_task("nextqa_mc").load(tmp_path)] == ["TN", "TN", "CW"]


def test_nextqa_prompts_videos_and_types(data_root, toy_wups):
    mc = get_task("nextqa_mc").load(data_root)
    assert mc[0].question == (
        "what did the baby do after throwing the cup\nA. clap proudly\nB. the lady sitting down\n"
        "C. lay on floor\nD. just picked it up\nE. crawl"
    )
    assert mc[0].answer == "C" and mc[0].video.endswith("NExTVideo/0001/2574374895.mp4")
    assert mc[1].video.endswith("NExTVideo/4010069381.mp4")
    oe = get_task("nextqa_oe").load(data_root)
    assert oe[0].question == "why does the baby clap\nAnswer a question using a short phrase or sentence."
    assert oe[0].meta["extra_answer"] == "excited"
    assert oe[2].meta["group"] == "TN"  # TP counts as TN
    assert get_task("nextqa_oe").score(oe[0], "excited").value == 1.0


def test_videomme_prompts_with_and_without_subtitles(data_root):
    plain = get_task("videomme").load(data_root)[0]
    assert get_task("videomme").prompt(plain, None) == (
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\nHow many stars are shown?\n"
        "A. 1.\nB. 2.\nC. 3.\nD. 4.\n\nAnswer with the option's letter from the given choices directly."
    )
    sub_task = get_task("videomme_sub")
    sample = sub_task.load(data_root)[0]
    video = read_video(sample.video, 4)  # 8 frames at 8 fps: frames 0, 2, 4, 7 -> cues 1, 1, 2, none
    prompt = sub_task.prompt(sample, video)
    assert prompt.startswith("This video's subtitles are listed below: \nthe first line\nthe second line\nSelect")
    assert prompt.endswith("D. 4.\nThe best answer is:")
    sample.meta["subtitle"] = str(data_root / "nowhere.srt")
    assert sub_task.prompt(sample, video).startswith("This video's subtitles are listed below: \nNo subtitles available\n")


def test_srt_parsing_and_malformed_time(tmp_path):
    path = tmp_path / "s.srt"
    path.write_text(SRT)
    cues = parse_srt(path)
    assert [c[:2] for c in cues] == [(0.0, 0.4), (0.4, 0.8), (5.0, 6.0)]
    assert subtitle_text(cues, fps=8.0, total_frames=8, num_frames=1) == "the first line"
    path.write_text("1\n00:00:xx --> 00:00:01,000\nhello\n")
    with pytest.raises(ValueError, match="cannot read the subtitle time line"):
        parse_srt(path)


def test_missing_files_name_the_expected_layout(tmp_path):
    for name in ("mvbench", "egoschema", "nextqa_mc", "videomme"):
        with pytest.raises(FileNotFoundError, match="Expected layout"):
            get_task(name).load(tmp_path)


def test_nextqa_oe_needs_its_second_reference_answers(tmp_path, toy_wups):
    """lmms-eval scores every open-ended answer against both references: without the second, WUPS would
    drop on every question that has one."""
    from fixtures import write_nextqa

    write_nextqa(tmp_path)
    (tmp_path / "nextqa" / "oe" / "add_reference_answer_test.json").unlink()
    with pytest.raises(FileNotFoundError, match="second reference answers not found.*Expected layout"):
        get_task("nextqa_oe").load(tmp_path)


def test_malformed_annotation_files(tmp_path):
    write_mvbench(tmp_path)
    (tmp_path / "mvbench" / "json" / "action_count.json").write_text("{not json")
    (tmp_path / "mvbench" / "json" / "fine_grained_pose.json").write_text('{"a": 1}')
    (tmp_path / "mvbench" / "json" / "moving_count.json").unlink()
    with pytest.raises(ValueError, match=r"needs all 20 task files .*: missing moving_count\.json; action_count\.json "
                                         r"is not valid JSON .*; fine_grained_pose\.json must hold a JSON list"):
        get_task("mvbench").load(tmp_path)  # a part of MVBench is not MVBench's score
    (tmp_path / "egoschema").mkdir()
    (tmp_path / "egoschema" / "questions.json").write_text("[")
    (tmp_path / "egoschema" / "subset_answers.json").write_text("{}")
    with pytest.raises(ValueError, match="not valid JSON"):
        get_task("egoschema").load(tmp_path)


def test_budgets_that_differ_have_different_keys():
    from hieravid.eval.records import budget_key

    assert (budget_key(0.3), budget_key(1.0), budget_key(1)) == ("0.3", "1", "1")  # the names files already use
    assert budget_key(0.3) != budget_key(0.3000001)


@pytest.mark.parametrize("answer", ["(C)", "C. z", "2", "", "E"])
def test_a_videomme_answer_that_is_not_an_option_letter_fails_its_sample(tmp_path, answer):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fixtures import VIDEOMME_ROWS, write_videomme

    write_videomme(tmp_path)
    rows = [{**VIDEOMME_ROWS[0], "answer": answer}, {**VIDEOMME_ROWS[1], "answer": " b "}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "videomme" / "videomme" / "test-00000-of-00001.parquet")
    bad, good = get_task("videomme").load(tmp_path)
    assert f"answer {answer!r} of 001-1 is not an option letter (A-D)" == bad.error
    assert good.error is None and get_task("videomme").score(good, "B").value == 1.0


def test_a_subtitle_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "s.srt"
    path.write_bytes(SRT.encode().replace(b"first", b"f\xe9rst"))
    with pytest.raises(ValueError, match=r"s\.srt is not UTF-8 text"):
        parse_srt(path)


def test_a_nextqa_csv_saved_with_a_byte_order_mark_is_read(tmp_path):
    from fixtures import write_nextqa

    write_nextqa(tmp_path)
    path = tmp_path / "nextqa" / "mc" / "test.csv"
    expected = get_task("nextqa_mc").load(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as a spreadsheet program saves UTF-8
    assert get_task("nextqa_mc").load(tmp_path) == expected


def test_a_missing_nextqa_video_map_is_named_when_videos_sit_in_subfolders(tmp_path):
    from fixtures import write_nextqa

    from hieravid.warning import HieravidWarning

    write_nextqa(tmp_path)
    (tmp_path / "nextqa" / "map_vid_vidorID.json").unlink()
    with pytest.warns(HieravidWarning, match="map_vid_vidorID.json: the videos in .*subfolders are found through it"):
        samples = get_task("nextqa_mc").load(tmp_path)
    assert not Path(samples[0].video).is_file() and Path(samples[1].video).is_file()  # the flat copy still found
