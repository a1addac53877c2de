"""The sizes the rules declare follow what drives them (zoommil.workflow.resources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoommil.features.encoders.registry import ENCODERS
from zoommil.workflow import resources


def test_the_parameter_line_passes_through_the_measured_encoders():
    """An encoder nobody measured is sized as ~650 MB + ~4.2 bytes per published parameter:
    that line must agree with every measured encoder (benchmarks/process_memory.py) within
    10%, or the unmeasured ones (uni2-h, prov-gigapath, phikon-v2) are sized on a wrong line."""
    from zoommil.features.encoders.registry import get_spec

    checked = 0
    for encoder, measured in resources.ENCODER_PROCESS_MB.items():
        published = get_spec(encoder).published_params_range()
        if published is None:
            continue
        line = resources.PROCESS_BASE_MB + resources.BYTES_PER_PARAMETER * sum(published) / 2e6
        assert abs(line - measured) <= 0.10 * measured, (encoder, line, measured)
        checked += 1
    assert checked >= 3
    for encoder in ENCODERS:
        assert resources.encoder_process_mb(encoder) >= resources.PROCESS_BASE_MB
    # from the card's parameter count: ViT-H/14 uni2-h (681M) lies between virchow2 and H-optimus
    assert 3265 < resources.encoder_process_mb("uni2-h") < 5241


def test_features_memory_grows_with_the_encoder_processes():
    """`features --threads N` on CPU runs N encoder processes; on a GPU one."""
    one, eight = (resources.features_mem_mb("uni", n) for n in (1, 8))
    assert eight >= 8 * 1984 and eight > 7 * one
    assert resources.features_mem_mb("uni", 8, "cuda") < 2 * one + 2000


def test_timing_memory_counts_worker_processes_up_to_the_slides():
    """The all-cores timing starts min(threads, n_slides) workers, each with its encoder."""
    assert resources.profile_mem_mb("uni", "cpu", 16, 10) >= 10 * 1984 + 600
    assert resources.profile_mem_mb("uni", "cpu", 16, 10) == resources.profile_mem_mb(
        "uni", "cpu", 10, 10
    )
    assert resources.profile_mem_mb("uni", "cpu", 1, 10) < 2 * 1984


def test_train_memory_follows_the_cache():
    disk = resources.train_mem_mb("zoommil", "disk", 8.0)
    assert resources.train_mem_mb("zoommil", "auto", 8.0) >= disk + 8 * 1024
    assert resources.train_mem_mb("zoommil", "auto", 40.0) >= 40 * 1024
    assert resources.train_mem_mb("transmil", "disk", 8.0) >= 2545
    # once QC has listed the feature files, auto keeps only what there is
    assert resources.train_mem_mb("zoommil", "auto", 8.0, 30 * 2**20) == disk + 30
    assert resources.train_mem_mb("zoommil", "memory", 8.0, 20 * 2**30) >= 20 * 1024
    assert resources.cache_settings(None) == ("auto", 8.0)
    assert resources.cache_settings({"cache": "disk", "cache_max_gb": 2}) == ("disk", 2.0)


def test_timing_work_follows_the_bag_the_preset_implies():
    """A timing process holds its slide's bag and the heads' passes over it: at 40x
    (4 x 10^4 patches) TransMIL's adds 1696 MB (benchmarks/head_memory.py), where the 20x
    figure (1000 MB) was kept for every preset; the 20x presets keep that figure."""
    assert resources.planned_patches([10.0, 20.0], 256) == 10_000
    assert resources.planned_patches([20.0, 40.0], 256) == 40_000
    assert resources.planned_patches([20.0, 40.0], 512) == 10_000
    for mags in ([10.0, 20.0], [5.0, 10.0, 20.0], [1.25, 2.5, 10.0]):
        patches = resources.planned_patches(mags, 256)
        work = resources.predict_work_mb("uni", resources.HEAD_MB_PER_10K, mags, patches)
        assert work == resources.PREDICT_WORK_MB, mags
    bag = 2 * 50_000 * 1024 * 4 / 2**20
    transmil = resources.predict_work_mb("uni", ["abmil", "transmil"], [20.0, 40.0], 40_000)
    assert transmil >= resources.PREDICT_SLIDE_MB + bag + 1696
    assert resources.predict_work_mb("uni", ["abmil"], [20.0, 40.0], 40_000) < transmil
    unknown = resources.predict_work_mb("uni", ["newmil"], [20.0, 40.0], 40_000)
    assert unknown == transmil
    assert resources.profile_mem_mb("uni", "cpu", 16, 10, transmil) >= 10 * (1984 + transmil)


def test_the_listed_patches_bound_the_largest_test_bag(tmp_path: Path):
    """Once QC has listed the feature files, the bag is the largest file's: its patches at
    the highest magnification, at most and within its HDF5 slack."""
    import numpy as np

    from zoommil.io.featurefile import write_feature_file
    from zoommil.wsi.lattice import children_order

    low = np.stack(np.divmod(np.arange(900), 32), axis=1)
    high = children_order(low)
    feats = [np.ones((len(c), 1024), np.float32) for c in (low, high)]
    path = tmp_path / "s.h5"
    write_feature_file(path, [10.0, 20.0], feats, [low, high], [c * 512 for c in (low, high)])
    patches = resources.listed_patches([path.stat().st_size, 10], "resnet50_layer3", [10.0, 20.0])
    slack = resources.file_slack_bytes(1024, 2) / (4 * 1024)
    assert len(high) <= patches < len(high) + slack
    table = tmp_path / "usable.tsv"
    table.write_text("slide_id\tpath\tlabel\tsplit\na\tx\tn\ttest\nb\ty\tn\ttrain\n")
    assert resources.slides_in_split(table, "test") == ["a"]
    assert resources.slides_in_split(tmp_path / "none.tsv", "test") == []


def test_auto_cache_beyond_the_cap_is_sized_as_disk():
    """`cache: auto` keeps every bag when they fit in `cache_max_gb`, else none
    (`load_splits`): a cohort whose bags exceed the cap was still sized at the cap."""
    disk = resources.train_mem_mb("abmil", "disk", 8.0)
    beyond = 9 * 2**30
    assert resources.train_mem_mb("abmil", "auto", 8.0, 12 * 2**30, beyond) == disk
    assert resources.train_mem_mb("abmil", "auto", 8.0, 12 * 2**30, 7 * 2**30) == disk + 8 * 1024
    assert resources.train_mem_mb("abmil", "memory", 8.0, 12 * 2**30, beyond) == disk + 12 * 1024


def test_the_least_loaded_bytes_bound_what_training_counts(tmp_path: Path):
    """The bound `train_mem_mb` weighs against the cap is at most what `load_splits` counts
    (else a cohort kept in memory would be sized as read from disk) and within each file's
    slack of it, for a model that reads every magnification and one that reads the highest."""
    import numpy as np

    from zoommil.io.featurefile import write_feature_file
    from zoommil.training.data import SlideRecord, drop_empty
    from zoommil.wsi.lattice import children_order

    records, sizes = [], []
    for i, n_low in enumerate((600, 900)):
        low = np.stack(np.divmod(np.arange(n_low), 32), axis=1)
        high = children_order(low)
        feats = [np.ones((len(c), 1024), np.float32) for c in (low, high)]
        path = tmp_path / f"s{i}.h5"
        write_feature_file(path, [10.0, 20.0], feats, [low, high], [c * 512 for c in (low, high)])
        records.append(SlideRecord(f"s{i}", 0, path))
        sizes.append(path.stat().st_size)
    for read in ([10.0, 20.0], [20.0]):
        counted = drop_empty(records, read)[3]
        least = resources.least_loaded_bytes(sizes, "resnet50_layer3", read, [10.0, 20.0])
        slack = 2 * resources.file_slack_bytes(1024, 2)
        assert counted - slack < least <= counted, (read, least, counted)


def test_flops_runtime_grows_with_test_slides_and_methods():
    nine = ["abmil", "clam_sb", "dsmil", "maxmil", "meanmil", "msmil", "sparseconvmil"]
    nine += ["transmil", "zoommil"]
    assert resources.flops_runtime_min(300, nine) >= 300 * 13 / 60
    assert resources.flops_runtime_min(300, nine + ["zoommil"] * 6) > resources.flops_runtime_min(
        300, nine
    )


def test_tables_are_counted_by_split(tmp_path: Path):
    table = tmp_path / "usable.tsv"
    table.write_text("slide_id\tpath\tlabel\tsplit\na\tx\tn\ttest\nb\ty\tn\ttrain\n")
    assert resources.rows_in_split(table, "test") == 1
    assert resources.rows_in_split(tmp_path / "missing.tsv", "test") is None
    manifest = tmp_path / "features.tsv"
    manifest.write_text("slide_id\tpath\tbytes\tmtime_ns\na\tx\t100\t1\nb\ty\t50\t2\n")
    assert resources.listed_bytes(manifest) == 150
    assert resources.listed_bytes(tmp_path / "none.tsv") is None


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_gpu_timing_is_sized_below_the_cpu_one(encoder):
    assert resources.profile_mem_mb(encoder, "cuda", 16, 10) < resources.profile_mem_mb(
        encoder, "cpu", 16, 10
    )


@pytest.mark.parametrize("threads", [1, 2, 8, 16])
@pytest.mark.parametrize("cpus", [2, 16])
def test_gpu_readers_are_counted_as_features_starts_them(monkeypatch, threads, cpus):
    """A one-thread GPU job (the features rule's own `threads: 1`) starts a reader per CPU it
    may use but one, up to 8 (`default_workers`); the sizing counted one reader."""
    import torch

    from zoommil.features import extraction

    monkeypatch.setattr(extraction, "usable_cpus", lambda: cpus)
    started = extraction.default_workers(torch.device("cuda"), threads)
    assert resources.reader_processes("cuda", threads) >= started
    if threads > 1:
        assert resources.reader_processes("cuda", threads) == started


def test_features_memory_counts_the_readers_workers_starts():
    """`features.args: {workers: N}` (`--workers N`) starts N reader processes on CPU and on a
    GPU instead of the default's 1 or up to 8: each is counted, none with 0."""
    default = resources.features_mem_mb("uni", 1, "cuda")
    assert resources.features_mem_mb("uni", 1, "cuda", 24) == default + 16 * 150
    assert (
        resources.features_mem_mb("uni", 8, "cpu", 6)
        == resources.features_mem_mb("uni", 8, "cpu") + 5 * 150
    )
    assert resources.features_mem_mb("uni", 8, "cpu", 0) < resources.features_mem_mb("uni", 8)
    assert resources.features_rule_mem_mb("uni", 1, 24) == default + 16 * 150


def test_the_features_rule_declares_a_gpu_job_of_one_thread():
    """The rule cannot see whether its job gets a GPU: at one thread the GPU job (its encoder,
    up to 8 readers and the CUDA context) is the larger, and H-optimus-0's needs more than
    6000 MB."""
    gpu = resources.ENCODER_PROCESS_MB["h-optimus-0"] + resources.FEATURES_WORK_MB
    gpu += 8 * resources.READER_PROCESS_MB + resources.CUDA_HOST_MB
    assert resources.features_rule_mem_mb("h-optimus-0", 1) >= gpu > 6000
    assert resources.features_rule_mem_mb("uni", 8) == resources.features_mem_mb("uni", 8)
