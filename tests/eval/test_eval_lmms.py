"""The lmms-eval plugin: entry points, lazy import, and ``generate_until`` on a fixture request.

lmms-eval is not installed in CI (it is a heavy install), so the requests here are a minimal stand-in with the
interface lmms-eval's ``Instance`` gives models (``args = (context, generation_kwargs, doc_to_visual, doc_id,
task, split)``) and the ``task_dict`` lmms-eval sets on the model.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pytest

from hieravid.eval.lmms import CLASS_NAMES, FAMILIES, HieravidLMM
from hieravid.infer import answer, load_model
from hieravid.video import read_video


@dataclass
class FakeInstance:
    """What a model sees of lmms-eval's Instance."""

    arguments: tuple
    metadata: dict = field(default_factory=dict)

    @property
    def args(self) -> tuple:
        return self.arguments


class Qwen2VLWrapper(HieravidLMM):
    family = "qwen2_vl"


class LlavaWrapper(HieravidLMM):
    family = "llava_onevision"


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(str(model_dir))


def _requests(video: str, until: Any = None) -> tuple[list[FakeInstance], dict]:
    docs = {"test": [{"video": video, "question": "what happens ?"}, {"video": video, "question": "what next ?"}]}
    kwargs = {"max_new_tokens": 2, "temperature": 0}
    if until is not None:
        kwargs["until"] = until
    requests = [
        FakeInstance((doc["question"], dict(kwargs), lambda d: [d["video"]], i, "fixture", "test"))
        for i, doc in enumerate(docs["test"])
    ]
    return requests, {"fixture": docs}


def test_entry_points_register_one_model_per_family():
    found = {ep.name: ep.value for ep in entry_points(group="lmms_eval.models")}
    for name in FAMILIES:
        assert found[name] == f"hieravid.eval.lmms:{name.removeprefix('hieravid_')}_manifest"


def test_importing_the_plugin_does_not_import_lmms_eval():
    code = "import sys, hieravid.eval.lmms as m; assert 'lmms_eval' not in sys.modules; print(sorted(m.CLASS_NAMES))"
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_model_classes_need_lmms_eval_only_when_asked_for():
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        import hieravid.eval.lmms as plugin

        for cls in CLASS_NAMES.values():
            with pytest.raises(ImportError):
                getattr(plugin, cls)
        with pytest.raises(ImportError):
            plugin.qwen2_vl_manifest()
    else:
        pytest.skip("lmms-eval is installed here")


def test_generate_until_answers_each_request_like_hieravid_answer(loaded, data_root, capsys):
    video = str(data_root / "egoschema" / "videos" / "0074f737-11cb-497d-8d07-77c3a8127391.mp4")
    model = Qwen2VLWrapper(loaded=loaded, method="hieravid", budget=0.3, max_num_frames=4)
    requests, model.task_dict = _requests(video)
    outputs = model.generate_until(requests)
    frames = read_video(video, 4)
    expected = [
        answer(loaded, frames.frames, r.args[0], method="hieravid", budget=0.3, max_new_tokens=2,
               timestamps_s=frames.timestamps_s).text
        for r in requests
    ]
    assert outputs == expected and all(isinstance(o, str) and o for o in outputs)
    assert all(s.flops_ratio < 0.5 for s in model.last_stats)
    kept = sum(s.achieved_budget for s in model.last_stats) / 2
    assert f"2 answers by hieravid at budget 0.3: visual tokens kept {kept:.3f}" in capsys.readouterr().err
    requests, model.task_dict = _requests(video, until=[" "])  # stop strings cut the answer
    assert model.generate_until(requests) == [o.split(" ")[0] for o in expected]


def test_lmms_evals_padding_requests_are_answered_but_not_counted(loaded, data_root, capsys):
    """lmms-eval evens out the processes' shares with copies of a request marked ``__padding_only__`` and drops
    their answers: each gets an answer (the same as its original's), but the statistics and the count on
    stderr are of the real requests only."""
    video = str(data_root / "egoschema" / "videos" / "0074f737-11cb-497d-8d07-77c3a8127391.mp4")
    model = Qwen2VLWrapper(loaded=loaded, method="hieravid", budget=0.3, max_num_frames=4)
    requests, model.task_dict = _requests(video)
    padding = FakeInstance(requests[-1].arguments, metadata={"__padding_only__": True})
    outputs = model.generate_until([*requests, padding, padding])
    assert len(outputs) == 4 and outputs[2] == outputs[3] == outputs[1]
    assert len(model.last_stats) == 2
    assert "hieravid: 2 answers by hieravid at budget 0.3" in capsys.readouterr().err


def test_the_plugin_cuts_answers_as_hieravid_eval_does(loaded, data_root, monkeypatch):
    """One cutting rule for both: at the earliest of the stop strings, whichever is listed first."""
    import hieravid.infer

    text = "xbcd\n\nmore"
    real = hieravid.infer.answer
    monkeypatch.setattr(hieravid.infer, "answer", lambda *a, **k: dataclasses.replace(real(*a, **k), text=text))
    video = str(data_root / "egoschema" / "videos" / "0074f737-11cb-497d-8d07-77c3a8127391.mp4")
    model = Qwen2VLWrapper(loaded=loaded, max_num_frames=4)
    cases = ((["cd", "bc"], "x"), (["\n\n"], "xbcd"), (None, text))
    for until, expected in cases:
        requests, model.task_dict = _requests(video, until=until)
        assert model.generate_until(requests[:1]) == [expected]
    from hieravid.eval.tasks import cut_at_stop

    assert [cut_at_stop(text, until) for until, _ in cases] == [expected for _, expected in cases]


def test_wrong_family_bad_arguments_and_non_video_requests(loaded, data_root):
    with pytest.raises(ValueError, match="use --model hieravid_qwen2_vl"):
        LlavaWrapper(loaded=loaded)
    with pytest.raises(ValueError, match="unknown method"):
        Qwen2VLWrapper(loaded=loaded, method="nope")
    with pytest.raises(ValueError, match="unknown model_args"):
        Qwen2VLWrapper(loaded=loaded, frames=8)
    with pytest.raises(ValueError, match="pretrained="):
        Qwen2VLWrapper()
    with pytest.raises(ValueError, match="model_args budget must be a number in \\(0, 1\\], got 'abc'"):
        Qwen2VLWrapper(loaded=loaded, method="hieravid", budget="abc")
    with pytest.raises(ValueError, match="unknown dtype 'float17'"):
        Qwen2VLWrapper(pretrained="unused", dtype="float17")
    with pytest.raises(ValueError, match="fastv.*budget 0.01 cannot be reached"):  # the model's depth: before any request
        Qwen2VLWrapper(loaded=loaded, method="fastv", budget=0.01)
    with pytest.raises(ValueError, match="model_args max_num_frames must be an integer >= 1, got 'many'"):
        Qwen2VLWrapper(loaded=loaded, max_num_frames="many")
    with pytest.raises(ValueError, match="model_args max_new_tokens must be an integer >= 1, got '0'"):
        Qwen2VLWrapper(loaded=loaded, max_new_tokens="0")
    model = Qwen2VLWrapper(loaded=loaded)
    model.task_dict = {"t": {"s": [{}]}}
    with pytest.raises(ValueError, match="exactly one video file"):
        model.generate_until([FakeInstance(("q", {}, lambda d: [object()], 0, "t", "s"))])
    with pytest.raises(NotImplementedError):
        model.loglikelihood([])


def test_under_accelerate_launch_the_processes_gather_through_the_models_accelerator(tmp_path, model_dir):
    """lmms-eval, with several processes, counts each one's requests with ``lm.accelerator.gather``."""
    script = tmp_path / "gather.py"
    script.write_text(
        "import sys, torch\n"
        "from hieravid.eval.lmms import HieravidLMM\n"
        "from hieravid.infer import load_model\n"
        "lm = HieravidLMM(loaded=load_model(sys.argv[1], device='cpu'), method='hieravid', budget=0.3)\n"
        "counts = lm.accelerator.gather(torch.tensor([lm.rank + 1], device=lm.device)).tolist()\n"
        "open(f'{sys.argv[2]}/rank{lm.rank}.txt', 'w').write(f'{lm.world_size} {counts}')\n"
        "lm.accelerator.wait_for_everyone()\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), str(script), str(model_dir), str(tmp_path),
    ]
    done = subprocess.run(command, check=False, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # each process: 2 processes, and the counts of both
        assert (tmp_path / f"rank{rank}.txt").read_text() == "2 [1, 2]"


def test_one_process_needs_no_accelerator(loaded):
    lm = HieravidLMM(loaded=loaded)
    assert (lm.rank, lm.world_size, lm.accelerator) == (0, 1, None)


def test_a_pruning_method_without_a_budget_prunes_at_the_default(loaded):
    """``method=hieravid`` alone prunes (at 0.3, as ``hieravid run``), it does not run unpruned under the
    method's name; ``vanilla`` keeps everything."""
    assert Qwen2VLWrapper(loaded=loaded, method="hieravid").budget == 0.3
    assert Qwen2VLWrapper(loaded=loaded, method="cdpruner").budget == 0.3
    assert Qwen2VLWrapper(loaded=loaded).budget == 1.0
    assert Qwen2VLWrapper(loaded=loaded, method="hieravid", budget="0.2").budget == 0.2
    with pytest.warns(UserWarning, match="vanilla keeps every visual token: budget 0.3 is ignored"):
        assert Qwen2VLWrapper(loaded=loaded, method="vanilla", budget="0.3").budget == 1.0  # what it reports


@pytest.mark.parametrize(
    ("device", "world", "expected"),
    [("auto", "1", "cuda:1"), ("auto", "2", "cuda:1"), ("cuda", "2", "cuda:1"), ("cuda", "1", "cuda"),
     ("cuda:0", "2", "cuda:0"), ("cpu", "2", "cpu")],
)
def test_each_process_runs_on_its_own_gpu(monkeypatch, device, world, expected):
    """Under ``accelerate launch`` a plain ``device=cuda`` is each process's own GPU (LOCAL_RANK), as in
    ``hieravid eval --device cuda``; a numbered GPU or the CPU is taken as given."""
    import torch

    from hieravid.eval import lmms

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lmms._device(device) == expected


@pytest.mark.parametrize("silenced", ["everything", "hieravid's", "nothing"])
def test_hieravids_warnings_reach_stderr_where_every_warning_is_ignored(loaded, data_root, monkeypatch, capsys,
                                                                        silenced):
    """lmms-eval ignores every warning once imported (``warnings.filterwarnings("ignore")``): the plugin
    prints hieravid's own on stderr, once each; a filter on HieravidWarning alone is the user's choice."""
    import warnings

    import hieravid.video
    from hieravid.warning import HieravidWarning

    video = str(data_root / "egoschema" / "videos" / "0074f737-11cb-497d-8d07-77c3a8127391.mp4")
    real = hieravid.video.read_video

    def read_and_warn(*args, **kwargs):
        warnings.warn("this video looks truncated", HieravidWarning, stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(hieravid.video, "read_video", read_and_warn)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        if silenced == "everything":
            warnings.filterwarnings("ignore")
        elif silenced == "hieravid's":
            warnings.filterwarnings("ignore", category=HieravidWarning)
        model = Qwen2VLWrapper(loaded=loaded, method="vanilla", budget=0.5, max_num_frames=4)
        requests, model.task_dict = _requests(video)
        model.generate_until(requests)
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hieravid: warning:")]
    if silenced == "everything":
        assert printed == ["hieravid: warning: method vanilla keeps every visual token: budget 0.5 is ignored",
                           "hieravid: warning: this video looks truncated"]  # once, for two requests
    else:
        assert printed == []
    caught = [str(w.message) for w in shown if issubclass(w.category, HieravidWarning)]
    assert len(caught) == (3 if silenced == "nothing" else 0)
