"""WebDataset shards (issue 14): reading with workers and processes, bad data, resume, `dmjd shard`."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

pytest.importorskip("webdataset")
import webdataset as wds

from conftest import TINY, tiny_config
from dmjd.cli import main
from dmjd.config import ConfigError
from dmjd.data import DataError
from dmjd.data.shards import index_shards
from dmjd.data.streaming import ShardBatches, ShardSamples, shard_batches
from dmjd.engine import Pretrainer, TrainingInterrupted, load_checkpoint

CPU = torch.device("cpu")
STEP = 5  # a sample's id is its gray level / STEP (solid JPEGs decode exactly enough; ids < 52)


def _encoded(value: int, side: int = 16, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), value % 256, np.uint8)).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def make_shards(folder: Path, shards: int = 4, per_shard: int = 10, corrupt: bool = False) -> str:
    """``shards`` tars of solid gray JPEGs (sample id ``i``: gray ``STEP*i``, class ``i % 3``); with
    ``corrupt`` one member is not an image, one is a PNG and the last shard is cut in half. Returns
    the pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"train-{s:06d}.tar")) as sink:
            for j in range(per_shard):
                i = s * per_shard + j
                image = {"jpg": b"not a jpeg" if corrupt and i == 3 else _encoded(STEP * i)}
                if corrupt and i == 5:
                    image = {"png": _encoded(STEP * i, fmt="PNG")}
                sink.write({"__key__": f"{i:06d}", **image, "cls": str(i % 3).encode()})
    if corrupt:
        last = folder / f"train-{shards - 1:06d}.tar"
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    return str(folder / f"train-{{000000..{shards - 1:06d}}}.tar")


def sample_id(image: Image.Image) -> torch.Tensor:
    """A transform giving a sample's id back (for counting who was seen)."""
    return torch.tensor([round(np.asarray(image, np.float32).mean() / STEP)])


def seen_ids(samples: ShardSamples, workers: int) -> tuple[list[int], list[int]]:
    """Ids and labels of one pass over ``samples`` through ``workers`` loader workers."""
    ids, labels = [], []
    for images, y, _bad in DataLoader(samples, batch_size=None, num_workers=workers):
        ids += images.flatten().tolist()
        labels += y.tolist()
    return ids, labels


def test_every_sample_once_per_epoch_across_workers_and_processes(tmp_path):
    urls = index_shards(make_shards(tmp_path, shards=5)).urls
    ids, labels = seen_ids(ShardSamples(urls, sample_id, seed=1, chunk=4, shuffle_buffer=8), workers=2)
    assert sorted(ids) == list(range(50))
    assert labels == [i % 3 for i in ids]  # labels round-trip with their images
    assert ids != sorted(ids)  # shuffled
    per_rank = [seen_ids(ShardSamples(urls, sample_id, 1, r, 2, chunk=4), workers=2)[0] for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(50))
    assert len(per_rank[0]) == 30 and len(per_rank[1]) == 20  # shards 0, 2, 4 and 1, 3


def test_index_uses_manifest_or_tar_headers_and_rejects_missing_shards(tmp_path):
    pattern = make_shards(tmp_path, shards=3, per_shard=7)
    index = index_shards(pattern)
    assert index.counts == (7, 7, 7) and index.classes == ()
    with pytest.raises(DataError, match="do not exist"):
        index_shards(str(tmp_path / "train-{000000..000009}.tar"))
    with pytest.raises(DataError, match="cannot feed 4 processes"):
        ShardSamples(index.urls, sample_id, world_size=4)


def test_corrupt_member_and_truncated_shard_are_skipped_and_counted(tmp_path):
    urls = index_shards(make_shards(tmp_path, corrupt=True)).urls
    ids, bad = [], 0
    for images, _y, b in DataLoader(ShardSamples(urls, sample_id, chunk=4), batch_size=None, num_workers=2):
        ids += images.flatten().tolist()
        bad += b
    assert 3 not in ids and set(range(30)) - {3} <= set(ids)  # shards 0-2 whole but for the corrupt one
    assert len(ids) == len(set(ids)) and bad >= 2  # the member and the truncated shard


@pytest.mark.parametrize("on_device", [False, True])
def test_batches_resume_mid_epoch_exactly_despite_bad_data(tmp_path, on_device):
    pattern = make_shards(tmp_path, shards=4, per_shard=12, corrupt=True)
    batches, _ = shard_batches(pattern, 8, 3, 0, 1, 2, CPU, img_size=8, in_chans=3, decode_on_device=on_device)
    assert batches.steps_per_epoch() == 5  # 36 + the readable part of the truncated shard
    full, bad = zip(*batches.epoch(1))
    resumed = [images for images, _bad in batches.epoch(1, start_step=3)]
    assert sum(bad) >= 2  # the member that is not an image (the PNG decodes) and the truncated shard
    assert len(full) == 5 and len(resumed) == 2 and all(x.shape == (8, 3, 8, 8) for x in full)
    assert all(x.min() >= 0 and x.max() <= 1 for x in full)
    for a, b in zip(full[3:], resumed):
        torch.testing.assert_close(a, b)
    assert not torch.equal(torch.stack(full), torch.stack([x for x, _ in batches.epoch(2)]))


def test_short_process_reads_its_shards_again_to_stay_in_step(tmp_path):
    index = index_shards(make_shards(tmp_path, corrupt=True))
    batches = ShardBatches(ShardSamples(index.urls, sample_id, chunk=4), index, 10, 0, CPU)
    assert batches.steps_per_epoch() == 3  # the manifest-less count: 30 + the readable half of the last
    out = list(batches.epoch(0))
    assert len(out) == 3 and sum(bad for _x, bad in out) >= 2


def test_pretraining_on_shards_counts_the_corrupt_member(tmp_path, capsys):
    pattern = make_shards(tmp_path / "shards", shards=4, per_shard=16, corrupt=True)
    cfg = tiny_config("data.name=webdataset", f"data.path={pattern}", "data.limit=null", "data.pipeline=auto",
                      "data.num_workers=2", "optim.batch_size=16", "optim.epochs=1",
                      "optim.warmup_epochs=0")  # fmt: skip
    summary = Pretrainer(cfg, tmp_path / "run").fit()
    assert summary["bad_images"] >= 2 and summary["steps"] >= 3
    out = capsys.readouterr().out
    assert "data.pipeline=auto: the streaming loader" in out and "4 shards" in out


def test_cli_shard_writes_manifest_that_matches(tmp_path, capsys):
    src = tmp_path / "images"
    for i in range(7):
        (src / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 30, 3), 20 * i, np.uint8)).save(src / f"class{i % 2}" / f"{i}.png")
    (src / "class0" / "broken.png").write_bytes(b"not a png")  # left out of the shards
    for split in ("val", "train"):  # a class folder without val/: the one seeded split of every command
        assert main(["shard", str(src), str(tmp_path / "out"), "--shard-size", "3", "--max-side", "20", "--split", split]) == 0
    assert "wrote 2 images (6 files of its train split left out)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == 7 and manifest["classes"] == ["class0", "class1"]
    assert [s["count"] for s in manifest["shards"] if s["name"].startswith("train")] == [3, 2]
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
        assert max(Image.open(tar.extractfile(member)).size) == 20
    index = index_shards(str(tmp_path / "out" / "train-{000000..000001}.tar"))
    assert index.counts == (3, 2) and index.classes == ("class0", "class1")
    labels = sorted(int(s["cls"]) for s in wds.WebDataset(index.urls, shardshuffle=False))
    assert labels == [0, 0, 0, 1, 1]  # 6.png and 3.png are the seeded split's val images
    piped = index_shards(f"pipe:cat {tmp_path / 'out' / 'train-{000000..000001}.tar'}")  # counts from the manifest
    assert piped.counts == (3, 2) and len(seen_ids(ShardSamples(piped.urls, sample_id), workers=0)[0]) == 5
    assert main(["shard", str(src), str(tmp_path / "out"), "--shard-size", "3"]) == 2  # not over old shards
    assert "already holds" in capsys.readouterr().err


def test_shard_copies_jpeg_files_that_need_no_shrinking(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    (src / "a.jpg").write_bytes(_encoded(100, side=30))
    (src / "b.jpg").write_bytes(_encoded(10, side=60))
    assert main(["shard", str(src), str(tmp_path / "out"), "--shard-size", "5", "--max-side", "40"]) == 0
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        jpgs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    assert jpgs[0] == (src / "a.jpg").read_bytes()  # byte for byte: no second compression
    assert max(Image.open(io.BytesIO(jpgs[1])).size) == 40  # shrunk, so re-encoded


def _stop_mid_second_epoch(trainer):
    if trainer.state.epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_pretraining_on_shards_resumes_mid_epoch_exactly(tmp_path, pipeline):
    pattern = make_shards(tmp_path / "shards", shards=4, per_shard=16)
    cfg = tiny_config("data.name=webdataset", f"data.path={pattern}", "data.limit=null", "data.num_workers=2",
                      f"data.pipeline={pipeline}",
                      "optim.batch_size=16", "optim.epochs=2", "optim.warmup_epochs=0")  # fmt: skip
    full = Pretrainer(cfg, tmp_path / "full").fit()
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        Pretrainer(cfg, tmp_path / "cut").fit(on_epoch_end=_stop_mid_second_epoch)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["run_state"]["epoch_step"] == 1  # mid-epoch
    assert Pretrainer(cfg, tmp_path / "cut", resume="auto").fit()["steps"] == full["steps"] == 8
    wa = load_checkpoint(tmp_path / "full" / "checkpoint-last.pth")["model"]
    wb = load_checkpoint(tmp_path / "cut" / "checkpoint-last.pth")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


GLOO_READER = """
import json, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
sys.path.insert(0, sys.argv[3])
from test_shards import sample_id
from dmjd.data.shards import index_shards
from dmjd.data.streaming import ShardSamples
dist.init_process_group("gloo")
samples = ShardSamples(index_shards(sys.argv[1]).urls, sample_id, 0, dist.get_rank(), dist.get_world_size(), chunk=4)
ids = [i for images, _y, _bad in DataLoader(samples, batch_size=None, num_workers=2) for i in images.flatten().tolist()]
gathered = [None, None]
dist.all_gather_object(gathered, ids)
if dist.get_rank() == 0:
    open(sys.argv[2], "w").write(json.dumps(gathered))
dist.destroy_process_group()
"""


def test_two_gloo_processes_with_two_workers_read_every_sample_once(tmp_path):
    pattern = make_shards(tmp_path / "shards", shards=6, per_shard=8)
    script = tmp_path / "reader.py"
    script.write_text(GLOO_READER)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port.getsockname()[1]), str(script), pattern, str(tmp_path / "ids.json"),
           str(Path(__file__).parent)]  # fmt: skip
    port.close()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_rank = json.loads((tmp_path / "ids.json").read_text())
    assert sorted(per_rank[0] + per_rank[1]) == list(range(48)) and len(per_rank[0]) == len(per_rank[1]) == 24


def test_config_needs_a_shard_pattern_and_no_limit():
    with pytest.raises(ConfigError, match=r"data.path is required"):
        tiny_config("data.name=webdataset", "data.limit=null")
    with pytest.raises(ConfigError, match=r"data.limit does not apply"):
        tiny_config("data.name=webdataset", "data.path=s-{0..1}.tar")


def _image_tree(root: Path, split: str, n: int, offset: int = 0) -> None:
    """``root/split/class{0,1}/*.png``: solid images whose gray level is ``STEP * id``, class ``id % 2``."""
    for i in range(offset, offset + n):
        (root / split / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 20), STEP * i, np.uint8)).save(root / split / f"class{i % 2}" / f"{i}.png")


def _train_and_val_shards(root: Path, n_train: int, n_val: int, train_size: int, val_size: int) -> Path:
    """An ImageFolder tree (val ids from 30) written by ``dmjd shard`` as train and val shards into
    ``root/shards``."""
    _image_tree(root / "tree", "train", n_train)
    _image_tree(root / "tree", "val", n_val, offset=30)
    out = root / "shards"
    assert main(["shard", str(root / "tree"), str(out), "--shard-size", str(train_size)]) == 0
    assert main(["shard", str(root / "tree"), str(out), "--shard-size", str(val_size), "--split", "val"]) == 0
    return out


def test_eval_splits_read_train_and_val_shards_by_index_with_labels(tmp_path, capsys):
    from dmjd.data import build_dataset
    from dmjd.eval.features import dataset_labels, labelled_splits

    out = _train_and_val_shards(tmp_path, 9, 4, train_size=4, val_size=3)
    assert "test split" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())  # one manifest lists both splits
    assert manifest["splits"] == {"train": 9, "val": 4} and manifest["samples"] == 13
    assert [s["name"] for s in manifest["shards"]] == [f"train-00000{i}.tar" for i in range(3)] + [
        "val-000000.tar", "val-000001.tar"]  # fmt: skip
    assert index_shards(str(out / "val-{000000..000001}.tar")).counts == (3, 1)
    train, test = labelled_splits("webdataset", str(out / "train-{000000..000002}.tar"), sample_id, sample_id)
    ids = sorted(int(train[i][0]) for i in range(len(train)))
    assert ids == list(range(9)) and sorted(int(x) for x, _y, _s in test) == [30, 31, 32, 33]
    for ds in (train, test):  # labels round-trip, read from the tar headers and from the items alike
        assert dataset_labels(ds).tolist() == [int(ds[i][0]) % 2 for i in range(len(ds))]
        assert ds.classes == ("class0", "class1")
    with pytest.raises(DataError, match="no test shards"):
        build_dataset("webdataset", "test", sample_id, make_shards(tmp_path / "lone", shards=1))


def test_shard_images_stand_in_for_a_corrupt_member_and_keep_whole_samples(tmp_path):
    from dmjd.data.shards import ShardImages, expand_shards

    ds = ShardImages(expand_shards(make_shards(tmp_path, shards=4, per_shard=10, corrupt=True)), sample_id)
    items = [ds[i] for i in range(len(ds))]
    assert 30 <= len(ds) < 40  # the truncated shard gives its whole samples only
    assert items[3][2] == 1 and int(items[3][0]) == 4  # not an image: the next sample stands in, flagged
    assert int(items[5][0]) == 5  # the PNG reads
    assert all(y == int(x) % 3 for x, y, _s in items)  # each label is that of the image it comes with
    with pytest.raises(DataError, match="local files"):
        ShardImages(["pipe:cat x.tar"], sample_id)


def test_knn_and_monitor_evaluate_a_run_pretrained_on_shards(tmp_path, capsys):
    out = _train_and_val_shards(tmp_path, 24, 8, train_size=8, val_size=8)
    overrides = ["data.name=webdataset", f"data.path={out}/train-{{000000..000002}}.tar", "data.limit=null",
                 "optim.batch_size=8", "optim.epochs=1", "optim.warmup_epochs=0", "monitor.interval=1",
                 "monitor.max_images=100"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["pretrain", "--config", "demo", "--output-dir", str(run), *TINY, "train.progress=false", *overrides]) == 0
    assert "knn_top1" in capsys.readouterr().out  # the monitor evaluated on the train/val shards
    assert main(["knn", "--checkpoint", str(run / "checkpoint-last.pth")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["data"] == "webdataset" and result["test_images"] == 8 and 0 <= result["knn_top1"] <= 1


def test_grey_warning_looks_at_the_first_image_of_shards(tmp_path):
    from dmjd.engine.training_data import grey_warning

    grey = make_shards(tmp_path / "grey", shards=1)  # solid gray JPEGs
    assert grey_warning(tiny_config("data.name=webdataset", f"data.path={grey}", "data.limit=null",
                                    "model.in_chans=1")) is None  # fmt: skip
    (tmp_path / "tree" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "tree" / "a" / "x.jpg")
    assert main(["shard", str(tmp_path / "tree"), str(tmp_path / "colour"), "--shard-size", "4"]) == 0
    colour = tiny_config("data.name=webdataset", f"data.path={tmp_path / 'colour' / 'train-000000.tar'}",
                         "data.limit=null", "model.in_chans=1")  # fmt: skip
    assert "model.in_chans=3" in grey_warning(colour)
