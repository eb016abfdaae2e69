"""MVBench (Li et al., CVPR 2024): 20 video tasks x 200 multiple-choice questions, read from its released files.

Data: the Hugging Face dataset ``OpenGVLab/MVBench`` (revision ``video``, the one lmms-eval uses: every clip is
a video file, the Charades and TVQA clips already cut to their segments). Layout under ``--data-root``::

    mvbench/json/<task>.json             e.g. json/action_antonym.json: [{"video", "question", "candidates", "answer"}, ...]
    mvbench/video/<folder>/<video>        the unzipped videos, <folder> per task as below (video/ may be omitted)

Prompt and scoring follow lmms-eval's ``mvbench`` tasks: ``"Question:" + question + "\\nOption:\\n(A) ...\\n(B) ...\\n"
"Only give the best option.\\n"``, 16 new tokens, the answer normalised by MVBench's rule
(:func:`hieravid.eval.choice.mvbench_option`). The score is the accuracy over all 4000 questions (each task has
200, so this equals the mean of the task accuracies); per-task accuracies are in the details.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from hieravid.eval.choice import mvbench_option
from hieravid.eval.tasks import Sample, Score, Task, find_video, register_task

__all__ = ["MVBENCH_FOLDERS", "MVBench"]

# task -> folder of its videos (lmms-eval's table for the `video` revision)
MVBENCH_FOLDERS = {
    "action_sequence": "star/Charades_segment",
    "moving_count": "clevrer/video_validation",
    "action_prediction": "star/Charades_segment",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "action_antonym": "ssv2_video_mp4",
    "action_count": "perception/videos",
    "scene_transition": "scene_qa/video",
    "object_shuffle": "perception/videos",
    "object_existence": "clevrer/video_validation",
    "fine_grained_pose": "nturgbd_convert",
    "unexpected_action": "FunQA_test/test",
    "moving_direction": "clevrer/video_validation",
    "state_change": "perception/videos",
    "object_interaction": "star/Charades_segment",
    "character_order": "perception/videos",
    "action_localization": "sta/sta_video_segment",
    "counterfactual_inference": "clevrer/video_validation",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "moving_attribute": "clevrer/video_validation",
    "egocentric_navigation": "vlnqa",
}
POST_PROMPT = "Only give the best option.\n"


class MVBench(Task):
    name = "mvbench"
    layout = (
        "<data-root>/mvbench/json/<task>.json and <data-root>/mvbench/video/<folder>/<video> "
        "(Hugging Face dataset OpenGVLab/MVBench, revision 'video', videos unzipped)"
    )

    def load(self, data_root: Path) -> list[Sample]:
        root = Path(data_root) / "mvbench"
        json_dir = root / "json"
        if not json_dir.is_dir():
            raise FileNotFoundError(f"MVBench annotations not found: no folder {json_dir}. Expected layout: {self.layout}")
        samples: list[Sample] = []
        missing, malformed = [], []
        for sub_task, folder in MVBENCH_FOLDERS.items():
            path = json_dir / f"{sub_task}.json"
            if not path.is_file():
                missing.append(path.name)
                continue
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                malformed.append(f"{path.name} is not valid JSON ({err})")
                continue
            if not isinstance(records, list):
                malformed.append(f"{path.name} must hold a JSON list of questions")
                continue
            samples.extend(self._sample(root, sub_task, folder, i, record) for i, record in enumerate(records))
        if len(missing) == len(MVBENCH_FOLDERS):
            raise FileNotFoundError(f"no MVBench task file in {json_dir} (e.g. action_antonym.json). Expected layout: {self.layout}")
        # MVBench's score is over its 20 tasks: a part of them would be another number under its name
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + malformed
        if problems:
            raise ValueError(
                f"MVBench needs all {len(MVBENCH_FOLDERS)} task files in {json_dir}: {'; '.join(problems)}; "
                "download them again (Hugging Face dataset OpenGVLab/MVBench, revision 'video')"
            )
        return samples

    def _sample(self, root: Path, sub_task: str, folder: str, index: int, record: object) -> Sample:
        sample_id = f"{sub_task}/{index}"
        meta = {"group": sub_task}
        fields = ("video", "question", "candidates", "answer")
        if not isinstance(record, dict) or any(k not in record for k in fields):
            return Sample(id=sample_id, task=self.name, question="", meta=meta, error=f"record needs the fields {fields}")
        if not isinstance(record["candidates"], list) or not record["candidates"]:
            return Sample(id=sample_id, task=self.name, question="", meta=meta,
                          error=f"candidates must be a non-empty JSON list of options, got {record['candidates']!r}")
        if not isinstance(record["video"], str) or not isinstance(record["question"], str):
            return Sample(id=sample_id, task=self.name, question="", meta=meta,
                          error="video and question must be strings")
        candidates = [str(c) for c in record["candidates"]]
        if record["answer"] not in record["candidates"] or len(candidates) > len(string.ascii_uppercase):
            return Sample(id=sample_id, task=self.name, question="", meta=meta,
                          error=f"answer {record['answer']!r} is not one of the candidates {candidates}")
        letter = string.ascii_uppercase[record["candidates"].index(record["answer"])]
        options = "".join(f"({string.ascii_uppercase[i]}) {c}\n" for i, c in enumerate(candidates))
        question = f"Question:{record['question']}\nOption:\n{options}{POST_PROMPT}"
        name = str(record["video"])
        video = find_video([
            root / "video" / folder / name,
            root / folder / name,
            root / "video" / "data0613" / folder / name,
            root / "data0613" / folder / name,
        ])
        return Sample(id=sample_id, task=self.name, question=question, answer=letter, options=candidates,
                      video=str(video), meta=meta)

    def score(self, sample: Sample, prediction: str) -> Score:
        letter = mvbench_option(prediction)
        if letter is None:
            return Score(0.0, parsed=None, failure=f"no option letter in the answer {prediction!r}")
        return Score(1.0 if letter == sample.answer else 0.0, parsed=letter)


register_task(MVBench())
