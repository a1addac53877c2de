"""The MIL baselines and the model registry: shapes, bag-size extremes, determinism, the
per-model details that are easy to get wrong, and a toy task each model must learn."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from zoommil.errors import ZoomMILError
from zoommil.models import MODEL_NAMES, build_model, default_mags
from zoommil.models.clam import CLAMSB, clam_instance_indices, smooth_top1_svm
from zoommil.models.dsmil import DSMIL, concat_parent_features
from zoommil.models.msmil import MSMIL, _AdaptiveGradReverse
from zoommil.models.nystrom import NystromAttention, iterative_pinv
from zoommil.models.sparseconvmil import SparseConvMIL, augmented_cells, grid_cells
from zoommil.models.transmil import PPEG, TransMIL
from zoommil.option_values import known_arch

REPO = Path(__file__).resolve().parents[1]

BASELINES = [n for n in MODEL_NAMES if n != "zoommil"]
ALL = [*BASELINES, "zoommil"]
MAGS = [5.0, 10.0]
TOY_DIM = 32
N_CLASSES = 3
STRENGTH = 16.0
TOY = {"sparseconvmil": dict(lr=2e-3, embed_dim=32)}  # the paper's lr


def small_model(name: str, in_dim: int = TOY_DIM, **kwargs) -> torch.nn.Module:
    """A model of the paper's widths for a two-magnification (5x, 10x) bag."""
    if name == "sparseconvmil":
        kwargs.setdefault("downsample", 1)
    if name == "zoommil":
        kwargs.setdefault("k", 2)
    if name == "transmil":
        kwargs.setdefault("hidden", 64)  # 8 heads of 8: the paper's 512 costs minutes here
    return build_model(name, in_dim=in_dim, n_classes=N_CLASSES, mags=MAGS, **kwargs)


def quadtree_coords(n_low: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of n_low parents on a square and their 4 children each, depth-first order."""
    side = math.ceil(math.sqrt(n_low))
    low = torch.stack([torch.arange(n_low) // side, torch.arange(n_low) % side], dim=1)
    quad = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]])
    high = (2 * low[:, None, :] + quad[None]).reshape(-1, 2)
    return low, high


def random_bag(n_low: int, dim: int, gen: torch.Generator) -> tuple[list, list]:
    low = torch.randn(1, n_low, dim, generator=gen)
    high = torch.randn(1, 4 * n_low, dim, generator=gen)
    return [low, high], list(quadtree_coords(n_low))


@pytest.fixture(autouse=True)
def one_thread():
    """Small bags: thread hand-offs cost more than they save on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- toy task


def toy_bags(n_bags: int, seed: int) -> list[tuple[list, list, int]]:
    """Class 0: noise only; class c > 0: one 10x instance (and its 5x parent) carries pattern c.

    Bags have 5-12 parents (20-48 instances at 10x); one key instance decides the label.
    """
    gen = torch.Generator().manual_seed(1234)
    patterns = F.normalize(torch.randn(N_CLASSES, TOY_DIM, generator=gen), dim=1) * STRENGTH
    gen = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n_bags):
        label = i % N_CLASSES
        n_low = int(torch.randint(5, 13, (1,), generator=gen))
        feats, coords = random_bag(n_low, TOY_DIM, gen)
        if label > 0:
            parent = int(torch.randint(n_low, (1,), generator=gen))
            child = 4 * parent + int(torch.randint(4, (1,), generator=gen))
            feats[0][0, parent] += patterns[label]
            feats[1][0, child] += patterns[label]
        bags.append((feats, coords, label))
    return bags


def inputs_for(name: str, feats: list, coords: list) -> tuple[list, list]:
    used = default_mags(name, MAGS)
    idx = [MAGS.index(m) for m in used]
    return [feats[i] for i in idx], [coords[i] for i in idx]


def bag_loss(model: torch.nn.Module, feats: list, coords: list, target: torch.Tensor):
    """(logits, loss): the model's own ``training_loss`` if it has one, else cross-entropy."""
    if hasattr(model, "training_loss"):
        return model.training_loss(feats, coords, target)
    logits = model(feats, coords)
    return logits, F.cross_entropy(logits, target)


def train_toy(name: str, max_epochs: int = 20, lr: float = 1e-3, **kwargs) -> float:
    """Adam on fresh bags each epoch until an epoch is >= 98% right; held-out accuracy.

    The stopping rule only uses training bags; it spares the fast learners the budget that
    the models with an attention plateau (the key pattern of one class found late) need.
    """
    torch.manual_seed(0)
    model = small_model(name, **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    test = toy_bags(60, seed=0)
    for epoch in range(max_epochs):
        train = toy_bags(90, seed=1 + epoch)  # fresh bags every epoch: learn, not memorise
        model.train()
        right = 0
        for j in torch.randperm(len(train)).tolist():
            feats, coords, label = train[j]
            feats, coords = inputs_for(name, feats, coords)
            target = torch.tensor([label])
            optimizer.zero_grad()
            logits, loss = bag_loss(model, feats, coords, target)
            loss.backward()
            optimizer.step()
            right += int(logits.argmax()) == label
        if right >= 0.98 * len(train):
            break
    model.eval()
    correct = 0
    with torch.no_grad():
        for feats, coords, label in test:
            feats, coords = inputs_for(name, feats, coords)
            correct += int(model(feats, coords).argmax()) == label
    return correct / len(test)


@pytest.mark.parametrize("name", ALL)
def test_learns_key_instance_task(name):
    accuracy = train_toy(name, **TOY.get(name, {}))
    assert accuracy >= 0.9, f"{name}: held-out accuracy {accuracy:.2f}"


# --------------------------------------------------------------------------- interface


def bag_of(name: str, n_low: int, dim: int, seed: int = 0) -> tuple[list, list]:
    """The magnifications `name` reads out of a random aligned (5x, 10x) bag."""
    feats, coords = random_bag(n_low, dim, torch.Generator().manual_seed(seed))
    return inputs_for(name, feats, coords)


@pytest.mark.parametrize("name", ALL)
def test_output_shape_and_single_patch_bag(name):
    torch.manual_seed(0)
    model = small_model(name).eval()
    feats, coords = bag_of(name, 1, TOY_DIM)
    if len(feats) == 1:  # single-scale: truly one patch
        feats, coords = [feats[0][:, :1]], [coords[0][:1]]
    with torch.no_grad():
        logits = model(feats, coords)
        assert logits.shape == (1, N_CLASSES)
        assert torch.isfinite(logits).all()
        assert model(feats).shape == (1, N_CLASSES)  # coords are optional
    if hasattr(model, "training_loss"):
        model.train()
        logits, loss = model.training_loss(feats, coords, torch.tensor([2]))
        assert logits.shape == (1, N_CLASSES) and loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()


@pytest.mark.parametrize("name", ALL)
def test_inputs_from_a_notebook_are_taken_or_refused_in_one_line(name):
    """NumPy arrays and [N, D] tensors are bags like [1, N, D] tensors; a wrong width, integer
    features or magnifications listed highest first (single-scale models then read the lowest
    one's rows, MS-MIL its scales swapped) are one `ZoomMILError` for every model."""
    torch.manual_seed(0)
    model = small_model(name).eval()
    feats, coords = bag_of(name, 3, TOY_DIM)
    with torch.no_grad():
        logits = model(feats, coords)
        torch.testing.assert_close(model([f.numpy() for f in feats], coords), logits)
        as_float64 = [f.numpy().astype("float64") for f in feats]  # NumPy's default dtype
        torch.testing.assert_close(model(as_float64, coords), logits)
        torch.testing.assert_close(model([f[0] for f in feats], coords), logits)
        for dtype in (torch.float64, torch.float16):  # torch tensors: a dtype error before
            other = model([f.to(dtype) for f in feats], coords)
            torch.testing.assert_close(other, logits, atol=2e-2, rtol=0)
        as_bf16 = copy.deepcopy(model).to(torch.bfloat16)  # a converted model keeps its dtype
        assert as_bf16(feats, coords).dtype == torch.bfloat16
    with pytest.raises(ZoomMILError, match=f"expects {TOY_DIM}-d features, got 16-d"):
        model([f[..., :16] for f in feats], coords)
    with pytest.raises(ZoomMILError, match="floating-point features .* got torch.int64"):
        model([f.long() for f in feats], coords)
    both, both_coords = random_bag(3, TOY_DIM, torch.Generator().manual_seed(1))
    with pytest.raises(ZoomMILError, match=r"\[12, 3\] rows: expected the lowest magnification"):
        model(both[::-1], both_coords[::-1])
    assert model.in_dim == TOY_DIM


def test_sparseconvmil_without_coords_warns_that_the_layout_is_made_up():
    model = small_model("sparseconvmil").eval()
    feats, coords = bag_of("sparseconvmil", 3, TOY_DIM)
    with pytest.warns(UserWarning, match="without coords: the instances are laid out"):
        model(feats)


@pytest.mark.parametrize("name", ALL)
def test_bag_of_50k_patches(name):
    torch.manual_seed(0)
    model = small_model(name, in_dim=64).eval()
    feats, coords = bag_of(name, 12_500, 64)
    assert feats[-1].shape[1] == 50_000
    with torch.no_grad():
        logits = model(feats, coords)
    assert logits.shape == (1, N_CLASSES) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_seed(name):
    feats, coords = bag_of(name, 8, TOY_DIM)
    target = torch.tensor([1])

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        model = small_model(name).train()  # dropout, patch sampling, augmentation all active
        logits, loss = bag_loss(model, feats, coords, target)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return logits.detach(), grads

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", ["maxmil", "abmil", "clam_sb", "transmil", "msmil", "dsmil"])
def test_attention_scores_cover_the_instances(name):
    torch.manual_seed(0)
    model = small_model(name).eval()
    feats, coords = bag_of(name, 7, TOY_DIM)
    with torch.no_grad():
        scores = model.attention_scores(feats, coords)
    n = sum(f.shape[1] for f in feats) if name == "msmil" else feats[-1].shape[1]
    assert scores.shape == (n,)
    assert (scores >= 0).all()
    if name in ("abmil", "clam_sb", "transmil", "msmil", "dsmil"):
        assert scores.sum().item() == pytest.approx(1.0, abs=1e-4)


def instance_embeddings(model: torch.nn.Module, feats: list) -> torch.Tensor:
    """The [N, hidden] instances an attention-pooling baseline weighs: ABMIL and CLAM-SB embed
    the highest magnification, MS-MIL every magnification (lowest first) with its own fc."""
    if isinstance(model, MSMIL):
        return torch.cat([fc(f[0]) for fc, f in zip(model.fcs, feats, strict=True)])
    return model.fc(feats[-1][0])


@pytest.mark.parametrize("name", ["abmil", "clam_sb", "msmil"])
def test_logits_are_the_head_on_the_attention_weighted_sum(name):
    """The weights `attention_scores` returns (what heatmaps show) are the ones that pool:
    a plain sum of the instances, or a softmax over the wrong axis, kept every shape right
    and passed the other tests."""
    torch.manual_seed(0)
    model = small_model(name).eval()
    feats, coords = bag_of(name, 7, TOY_DIM)
    with torch.no_grad():
        weights = model.attention_scores(feats, coords)
        pooled = (weights[:, None] * instance_embeddings(model, feats)).sum(dim=0)
        torch.testing.assert_close(model(feats, coords), model.classifier(pooled)[None])
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert weights.std() > 0  # a bag of random instances: not uniform weights


# --------------------------------------------------------------------------- registry


def test_registry_names_and_errors():
    assert MODEL_NAMES[0] == "zoommil"
    assert set(MODEL_NAMES) >= {
        "zoommil",
        "maxmil",
        "meanmil",
        "sparseconvmil",
        "abmil",
        "clam_sb",
        "transmil",
        "msmil",
        "dsmil",
    }
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    arch = schema["definitions"]["method"]["properties"]["arch"]
    assert arch["enum"] == list(MODEL_NAMES)  # a model added to one is added to the other
    with pytest.raises(ZoomMILError, match="unknown model 'resnet'.*abmil.*dsmil"):
        build_model("resnet")
    with pytest.raises(ZoomMILError, match="'abmil' does not take option.*\\bk\\b.*dropout"):
        build_model("abmil", k=4)
    assert isinstance(build_model("CLAM-SB", n_classes=3), CLAMSB)
    assert isinstance(build_model("MS-MIL", n_classes=3), MSMIL)  # the papers' spelling
    assert isinstance(build_model("Sparse_Conv-MIL", n_classes=3), SparseConvMIL)
    assert known_arch("MS-MIL", MODEL_NAMES) == "msmil" and known_arch("ms", MODEL_NAMES) is None
    with pytest.raises(ZoomMILError, match="unknown model 'MS-MIL-2'"):
        build_model("MS-MIL-2")


def test_default_mags_per_architecture():
    mags = [10.0, 1.25, 2.5]
    assert default_mags("zoommil", mags) == [1.25, 2.5, 10.0]
    assert default_mags("msmil", mags) == [1.25, 2.5, 10.0]
    assert default_mags("dsmil", mags) == [1.25, 10.0]
    assert default_mags("dsmil", [5]) == [5.0]
    for name in ("maxmil", "meanmil", "sparseconvmil", "abmil", "clam_sb", "transmil"):
        assert default_mags(name, mags) == [10.0]
    with pytest.raises(ZoomMILError, match="unknown model"):
        default_mags("vit", mags)


def test_build_model_routes_mags():
    msmil = build_model("msmil", in_dim=8, mags=[1.25, 2.5, 5.0, 10.0])
    assert len(msmil.fcs) == 4
    assert build_model("dsmil", in_dim=8, mags=[5.0, 10.0, 20.0]).n_scales == 2
    single = build_model("dsmil", in_dim=8, mags=[20.0])
    assert single.n_scales == 1 and single.instance_classifier.in_features == 8
    with pytest.raises(ZoomMILError, match="built for 4 magnifications but got 2"):
        msmil([torch.randn(1, 2, 8), torch.randn(1, 8, 8)])


# --------------------------------------------------------------------------- per-model details


def test_dsmil_concatenates_each_instance_with_its_parent():
    low = torch.arange(3.0)[:, None].repeat(1, 2)  # parent i has features (i, i)
    high = 100 + torch.arange(12.0)[:, None].repeat(1, 2)
    inst = concat_parent_features(low, high)
    assert inst.shape == (12, 4)
    assert torch.equal(inst[:, :2], high)
    assert torch.equal(inst[:, 2], torch.arange(12) // 4 * 1.0)
    # three magnifications: DSMIL reads the lowest and the highest, 16 children per parent
    model = DSMIL(in_dim=2, n_classes=2, n_scales=2)
    mid = torch.zeros(1, 12, 2)
    highest_feats = torch.arange(48.0)[None, :, None].repeat(1, 1, 2)
    inst = model.instances([low[None], mid, highest_feats])
    assert torch.equal(inst[:, 2], torch.arange(48) // 16 * 1.0)
    with pytest.raises(ZoomMILError, match="not aligned"):
        concat_parent_features(torch.zeros(3, 2), torch.zeros(10, 2))
    with pytest.raises(ZoomMILError, match="needs the lowest and the highest"):
        model.instances([highest_feats])


def test_dsmil_loss_is_half_bag_half_max_instance():
    torch.manual_seed(0)
    model = DSMIL(in_dim=4, n_classes=3, n_scales=1)
    feats = [torch.randn(1, 9, 4)]
    label = torch.tensor([2])
    logits, loss = model.training_loss(feats, None, label)
    max_inst = model.instance_classifier(feats[0][0]).max(dim=0).values[None]
    expected = 0.5 * F.cross_entropy(logits, label) + 0.5 * F.cross_entropy(max_inst, label)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("label", [0, 1])
def test_binary_dsmil_is_the_references_one_class_bce(label):
    """Two classes: one positive stream, as the reference trains CAMELYON16 (--num_classes=1):
    logits [0, z] and a loss equal to 0.5 BCE(z_bag) + 0.5 BCE(max_i s_i) for target label."""
    torch.manual_seed(0)
    model = DSMIL(in_dim=4, n_classes=2, n_scales=1)
    assert model.instance_classifier.out_features == 1 and model.fcc.out_channels == 1
    feats = [torch.randn(1, 9, 4)]
    logits, loss = model.training_loss(feats, None, torch.tensor([label]))
    assert logits.shape == (1, 2) and logits[0, 0] == 0
    assert torch.equal(model(feats), logits)
    s_max = model.instance_classifier(feats[0][0]).max()
    target = torch.tensor(float(label))
    bce = F.binary_cross_entropy_with_logits
    expected = 0.5 * bce(logits[0, 1], target) + 0.5 * bce(s_max, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert model.attention_scores(feats).shape == (9,)
    two = DSMIL(in_dim=4, n_classes=2, n_scales=1, binary_one_class=False)
    assert two.instance_classifier.out_features == 2


@pytest.mark.parametrize("n_classes", [2, 3])
def test_dsmil_starts_orthogonal_with_zero_biases(n_classes):
    """The reference's init: orthogonal Linear/Conv1d weights (rows or columns orthonormal,
    whichever are fewer) and zero biases, not torch's default uniform init."""
    torch.manual_seed(0)
    model = DSMIL(in_dim=16, n_classes=n_classes, n_scales=2, passing_v=True)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))]
    assert len(layers) == 5
    for layer in layers:
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)
        assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize(
    ("n", "k", "n_pos", "n_neg"),
    [(1, 1, 1, 0), (5, 5, 3, 2), (12, 8, 6, 6), (16, 8, 8, 8), (100, 8, 8, 8)],
)
def test_clam_k_is_min_8_n_without_overlap(n, k, n_pos, n_neg):
    scores = torch.randperm(n).float()
    pos, neg, got_k = clam_instance_indices(scores, 8)
    assert got_k == k and len(pos) == n_pos and len(neg) == n_neg
    assert not set(pos.tolist()) & set(neg.tolist())
    ranked = torch.argsort(scores, descending=True).tolist()
    assert sorted(pos.tolist()) == sorted(ranked[:n_pos])
    assert sorted(neg.tolist()) == sorted(ranked[n - n_neg :])


def test_smooth_top1_svm_against_its_definition():
    """Berrada et al. 2018, k = 1: tau log sum_j exp((s_j + alpha [j != y]) / tau) - s_y."""
    torch.manual_seed(0)
    s, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    by_hand = [
        math.log(sum(math.exp(s[i, j].item() + (j != y[i].item())) for j in range(3)))
        - s[i, y[i]].item()
        for i in range(5)
    ]
    assert smooth_top1_svm(s, y).item() == pytest.approx(sum(by_hand) / 5, rel=1e-12)
    assert smooth_top1_svm(s, y, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item())
    hinge = (s + 1 - F.one_hot(y, 3)).max(dim=1).values - s.gather(1, y[:, None])[:, 0]
    assert smooth_top1_svm(s, y, tau=1e-3).item() == pytest.approx(hinge.mean().item(), abs=1e-2)
    with pytest.raises(ZoomMILError, match="inst_loss"):
        CLAMSB(in_dim=4, inst_loss="hinge")


def test_clam_instance_loss_on_small_bags(monkeypatch):
    torch.manual_seed(0)
    model = CLAMSB(in_dim=8, n_classes=3)
    assert model.subtyping
    seen = []
    real_topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda x, k, **kw: seen.append(k) or real_topk(x, k, **kw))
    for n in (1, 3, 40):
        _, loss = model.training_loss([torch.randn(1, n, 8)], None, torch.tensor([0]))
        assert torch.isfinite(loss)
    assert seen == [1, 1, 3, 3, 8, 8]  # out-of-class top-k for the two other classes


@pytest.mark.parametrize("inst_loss", ["svm", "ce"])
def test_binary_clam_loss_is_07_bag_03_instance(inst_loss):
    binary = CLAMSB(in_dim=8, n_classes=2, inst_loss=inst_loss).eval()  # passes must agree
    assert not binary.subtyping
    torch.manual_seed(0)
    h, scores = binary._embed([torch.randn(1, 20, 8)])
    bag_only = binary.bag_weight * F.cross_entropy(
        binary.classifier(torch.softmax(scores, 1).mul(h).sum(1)), torch.tensor([1])
    )
    pos, neg, _ = clam_instance_indices(scores[0, :, 0], 8)
    loss_fn = smooth_top1_svm if inst_loss == "svm" else F.cross_entropy
    inst = loss_fn(
        binary.instance_classifiers[1](h[0, torch.cat([pos, neg])]),
        torch.cat([torch.ones(8), torch.zeros(8)]).long(),
    )
    torch.manual_seed(0)
    _, loss = binary.training_loss([torch.randn(1, 20, 8)], None, torch.tensor([1]))
    assert loss.item() == pytest.approx((bag_only + 0.3 * inst).item(), rel=1e-5)


def test_maxmil_uses_the_most_confident_instance():
    torch.manual_seed(0)
    model = build_model("maxmil", in_dim=6, n_classes=2).eval()
    feats = [torch.randn(1, 30, 6)]
    with torch.no_grad():
        inst = model.instance_logits(feats)
        top = torch.softmax(inst, 1)[:, 1].argmax()
        assert torch.equal(model(feats), inst[top][None])
    multi = build_model("maxmil", in_dim=6, n_classes=4).eval()
    with torch.no_grad():
        inst = multi.instance_logits(feats)
        top = torch.softmax(inst, 1).flatten().argmax() // 4
        assert torch.equal(multi(feats), inst[top][None])
        # its attention: every patch's probability of the predicted class, not of its own top
        predicted = int(multi(feats).argmax())
        assert multi.attention_class(multi(feats)) == predicted
        expected = torch.softmax(inst, 1)[:, predicted]
        torch.testing.assert_close(multi.attention_scores(feats), expected)
        assert model.attention_class(model(feats)) == 1  # binary: the positive class


def test_nystrom_matches_exact_attention():
    torch.manual_seed(0)
    attn = NystromAttention(dim=32, heads=2, dim_head=16, num_landmarks=8, residual=False)
    attn.eval()
    x = torch.randn(1, 8, 32)
    with torch.no_grad():
        q, k, v = attn._split_heads(x)
        ref = F.scaled_dot_product_attention(q / attn.scale, k, v)
        ref = attn.to_out(ref.transpose(1, 2).reshape(1, 8, 32))
        assert torch.allclose(attn(x), ref, atol=1e-5)  # n <= landmarks: exact
        # 8 distinct tokens, each repeated 5x in a row: the 8 segment-mean landmarks are the
        # distinct tokens and the Nystrom approximation becomes exact (pinv converged)
        attn.pinv_iterations = 20
        approx = attn(x.repeat_interleave(5, dim=1))
        assert torch.allclose(approx, ref.repeat_interleave(5, dim=1), atol=1e-4)
        row = attn.attention_row(x.repeat_interleave(5, dim=1))
        assert row.shape == (1, 40) and row.sum().item() == pytest.approx(1.0, abs=1e-4)


def test_iterative_pinv_inverts_attention_matrices():
    torch.manual_seed(0)
    x = torch.softmax(torch.randn(3, 16, 16), dim=-1) + torch.eye(16)
    x = x / x.sum(-1, keepdim=True)
    assert torch.allclose(iterative_pinv(x, 12) @ x, torch.eye(16).expand(3, 16, 16), atol=1e-3)


def test_transmil_pads_by_repeating_first_tokens():
    torch.manual_seed(0)
    model = TransMIL(in_dim=8, n_classes=2, hidden=16).eval()
    feats = [torch.randn(1, 7, 8)]
    tokens, side, n = model._tokens(feats)
    assert (side, n) == (3, 7) and tokens.shape == (1, 10, 16)
    assert torch.equal(tokens[0, 8:], tokens[0, 1:3])  # tokens 7, 8 repeat tokens 0, 1
    assert torch.equal(tokens[0, 0], model.cls_token[0, 0])


def test_sparseconvmil_map_averages_cells_and_is_translation_invariant():
    model = SparseConvMIL(in_dim=4, n_classes=2, downsample=2).eval()
    emb = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    coords = torch.tensor([[10, 10], [11, 11], [14, 10]])
    grid, mask = model.sparse_map(emb, grid_cells(coords, model.downsample))
    assert grid.shape == (1, 2, 3, 1) and mask.flatten().tolist() == [1.0, 0.0, 1.0]
    assert grid[0, :, 0, 0].tolist() == [2.0, 1.0] and grid[0, :, 2, 0].tolist() == [5.0, 5.0]
    torch.manual_seed(0)
    feats = [torch.randn(1, 20, 4)]
    pos = torch.stack([torch.arange(20) // 5, torch.arange(20) % 5], dim=1) * 2
    with torch.no_grad():
        out = model(feats, [pos])
        assert torch.allclose(out, model(feats, [pos + torch.tensor([40, 60])]))
        assert not torch.allclose(out, model(feats, [pos.flip(0)]))  # positions matter
    with pytest.raises(ZoomMILError, match="3 coordinates for 20 instances"):
        model(feats, [pos[:3]])


def test_sparseconvmil_training_map_is_rotated_stretched_and_shifted():
    """The reference's spatial augmentation: any angle, flips, per-axis stretch in
    [0.7, 1.3], a sub-cell shift; repeatable from the seed, cells start at 0, and distances
    between positions change by at most the stretch (plus a cell of flooring)."""
    pos = torch.stack(torch.meshgrid(torch.arange(30), torch.arange(20), indexing="ij"), -1)
    pos = pos.reshape(-1, 2) * 3 + 7
    torch.manual_seed(0)
    draws = [augmented_cells(pos, 10) for _ in range(20)]
    torch.manual_seed(0)
    assert torch.equal(augmented_cells(pos, 10), draws[0])
    assert all(d.min(dim=0).values.tolist() == [0, 0] for d in draws)
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 20  # not 8 symmetries
    shapes = {tuple((d.max(dim=0).values + 1).tolist()) for d in draws}
    assert len(shapes) > 8
    far = (pos[-1] - pos[0]).double().norm() / 10
    for d in draws:
        moved = (d[-1] - d[0]).double().norm()
        assert 0.7 * far - 2 <= moved <= 1.3 * far + 2
    model = SparseConvMIL(in_dim=4, n_classes=2, n_tiles=0)
    feats = [torch.randn(1, len(pos), 4)]
    torch.manual_seed(1)
    a = model.train()(feats, [pos])
    assert not torch.allclose(a, model(feats, [pos]))  # a new map every step
    assert torch.equal(model.eval()(feats, [pos]), model(feats, [pos]))


def test_msmil_pools_all_magnifications_and_optional_domain_branch():
    torch.manual_seed(0)
    model = build_model("msmil", in_dim=8, n_classes=2, mags=[5.0, 10.0], n_domains=3)
    feats = [torch.randn(1, 2, 8), torch.randn(1, 8, 8)]
    assert model.attention_scores(feats).shape == (10,)
    _, plain = model.training_loss(feats, None, torch.tensor([1]))
    _, with_domain = model.training_loss(feats, None, torch.tensor([1]), domain=torch.tensor([2]))
    assert with_domain.item() > plain.item()
    with_domain.backward()
    assert model.domain_classifier.weight.grad is not None
    assert build_model("msmil", in_dim=8, mags=[5.0, 10.0]).domain_classifier is None


def test_bad_bags_are_user_errors():
    model = build_model("abmil", in_dim=8)
    with pytest.raises(ZoomMILError, match="expects 8-d features, got 4-d"):
        model([torch.randn(1, 5, 4)])
    with pytest.raises(ZoomMILError, match="empty bag"):
        model([torch.randn(1, 0, 8)])


@pytest.mark.parametrize("name", ALL)
def test_paper_dimensions_on_1024d_features(name):
    torch.manual_seed(0)
    model = build_model(name, n_classes=3, mags=MAGS).eval()
    feats, coords = bag_of(name, 4, 1024)
    with torch.no_grad():
        assert model(feats, coords).shape == (1, 3)
    fc = {
        "maxmil": lambda m: m.fc[0],
        "meanmil": lambda m: m.fc[0],
        "abmil": lambda m: m.fc[0],
        "clam_sb": lambda m: m.fc[0],
        "transmil": lambda m: m.fc[0],
        "msmil": lambda m: m.fcs[1][0],
    }.get(name)
    if fc is not None:
        assert (fc(model).in_features, fc(model).out_features) == (1024, 512)
    if name in ("abmil", "clam_sb", "msmil"):
        assert model.attention.score.in_features == 256
    if name == "transmil":
        attn = model.layer1.attn
        assert (attn.heads, attn.dim_head, attn.num_landmarks) == (8, 64, 256)
        assert attn.pinv_iterations == 6 and attn.res_conv is not None
    if name == "dsmil":
        assert model.fcc.kernel_size == (2048,) and model.q[0].out_features == 128


# --------------------------------------------------------------------------- exact formulas
# Each model against its paper's definition, written out by hand on a tiny bag (float64).


def _svm(logits: torch.Tensor, target: list[int]) -> torch.Tensor:
    """Smooth top-1 SVM (alpha = tau = 1), mean over rows, written out term by term."""
    rows = [
        torch.logsumexp(s + torch.tensor([float(j != y) for j in range(len(s))]), 0) - s[y]
        for s, y in zip(logits, target, strict=True)
    ]
    return torch.stack(rows).mean()


def test_dsmil_multiclass_matches_its_definition():
    """Li et al. 2021: critical instance m_c = argmax_i s[i, c]; A = softmax_i(q_i . q_m_c /
    sqrt(q_dim)); bag embedding B = A^T h; Conv1d(C, C, K) on B; the attention map of a
    multi-class bag is the predicted class's column of A."""
    torch.manual_seed(3)
    model = DSMIL(in_dim=4, n_classes=3, n_scales=1, q_dim=16).double().eval()
    h = torch.randn(9, 4, dtype=torch.float64)
    with torch.no_grad():
        w, b = model.instance_classifier.weight, model.instance_classifier.bias
        s = h @ w.T + b  # [N, C]
        q1, q2 = model.q[0], model.q[2]
        q = torch.tanh(torch.relu(h @ q1.weight.T + q1.bias) @ q2.weight.T + q2.bias)
        critical = [int(max(range(9), key=lambda i, c=c: s[i, c])) for c in range(3)]
        attn = torch.softmax(q @ q[critical].T / math.sqrt(16), dim=0)  # [N, C]
        bag = attn.T @ h  # [C, K]
        logits = torch.einsum("cdk,dk->c", model.fcc.weight, bag) + model.fcc.bias
        assert torch.allclose(model([h[None]]), logits[None], atol=1e-12)
        best, worst = int(logits.argmax()), int(logits.argmin())
        assert critical[best] != critical[worst]  # the two columns of A differ
        assert torch.allclose(model.attention_scores([h[None]]), attn[:, best], atol=1e-12)


def test_clam_subtyping_instance_loss_matches_its_definition():
    """Lu et al. 2021 (``--subtyping``): classifier of the true class: top-k attended -> 1,
    bottom-k -> 0; classifier of every other class: top-k -> 0; the sum divided by C."""
    torch.manual_seed(0)
    model = CLAMSB(in_dim=8, n_classes=3, hidden=16).double()
    h = torch.randn(20, 16, dtype=torch.float64)
    scores = torch.randperm(20).double()  # distinct attention scores
    order = sorted(range(20), key=lambda i: -float(scores[i]))
    top, bottom = order[:8], order[-8:]
    clf = model.instance_classifiers
    with torch.no_grad():
        in_class = _svm(clf[1](h[top + bottom]), [1] * 8 + [0] * 8)
        out_class = _svm(clf[0](h[top]), [0] * 8) + _svm(clf[2](h[top]), [0] * 8)
        expected = (in_class + out_class) / 3
        assert model.instance_loss(h, scores, 1).item() == pytest.approx(expected.item(), rel=1e-12)


def test_transmil_classifies_the_cls_token_after_ppeg():
    """Shao et al. 2021: pad to ceil(sqrt N)^2 by repeating the first tokens, prepend CLS,
    TransLayer -> PPEG -> TransLayer -> LayerNorm, classify the CLS token."""
    torch.manual_seed(0)
    model = TransMIL(in_dim=8, n_classes=3, hidden=16).double().eval()
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        h = model.fc(x)
        tokens = torch.cat([model.cls_token, h, h[:, :2]], dim=1)  # 7 -> 9 = 3 x 3
        out = model.layer2(model.ppeg(model.layer1(tokens), 3))
        expected = model.classifier(model.norm(out[:, 0]))
        assert torch.allclose(model([x]), expected, atol=1e-12)


def test_ppeg_adds_the_identity_and_three_depthwise_convs():
    """PPEG(x) = x + conv7(x) + conv5(x) + conv3(x) on the token grid; CLS untouched. With
    centre-tap kernels a, b, c and zero biases every token becomes (1 + a + b + c) x."""
    ppeg = PPEG(dim=4).double()
    with torch.no_grad():
        for conv, tap in ((ppeg.proj7, 0.5), (ppeg.proj5, -0.25), (ppeg.proj3, 2.0)):
            conv.weight.zero_()
            conv.bias.zero_()
            centre = conv.kernel_size[0] // 2
            conv.weight[:, 0, centre, centre] = tap
        x = torch.randn(1, 1 + 9, 4, dtype=torch.float64)
        out = ppeg(x, 3)
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.allclose(out[:, 1:], 3.25 * x[:, 1:], atol=1e-12)


def test_transmil_attention_averages_padded_copies_with_their_instances():
    """N = 7 is padded with copies of instances 0 and 1: each of the two gets the mean of its
    own and its copy's attention (a sum made the padded rows twice as bright in a heatmap).
    Reference: exact softmax attention of the CLS query in the last layer (9 tokens <= 256
    landmarks), averaged over heads, CLS column dropped."""
    torch.manual_seed(0)
    model = TransMIL(in_dim=8, n_classes=2, hidden=16).double().eval()
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    attn = model.layer2.attn
    with torch.no_grad():
        tokens, side, n = model._tokens([x])
        y = model.layer2.norm(model.ppeg(model.layer1(tokens), side))[0]
        q, k, _ = attn.to_qkv(y).view(10, 3, attn.heads, attn.dim_head).unbind(1)
        logits = torch.einsum("hd,nhd->hn", q[0], k) / math.sqrt(attn.dim_head)
        row = torch.softmax(logits, dim=-1).mean(0)[1:]  # [9]: instances 0..6, copies of 0, 1
        folded = row[:7].clone()
        folded[0] = (row[0] + row[7]) / 2
        folded[1] = (row[1] + row[8]) / 2
        expected = folded / folded.sum()
        assert torch.allclose(model.attention_scores([x]), expected, atol=1e-10)


def test_meanmil_averages_the_instance_embeddings():
    """Mean pooling: the bag embedding is (1/N) sum_i relu(W x_i + b), so repeating every
    instance of a bag does not change its logits."""
    torch.manual_seed(0)
    model = build_model("meanmil", in_dim=6, n_classes=3, hidden=8).double().eval()
    x = torch.randn(1, 10, 6, dtype=torch.float64)
    fc, head = model.fc[0], model.classifier
    with torch.no_grad():
        pooled = torch.relu(x[0] @ fc.weight.T + fc.bias).sum(0) / 10
        assert torch.allclose(model([x]), (pooled @ head.weight.T + head.bias)[None], atol=1e-12)
        assert torch.allclose(model([x.repeat(1, 2, 1)]), model([x]), atol=1e-12)


def test_msmil_gradient_reversal_is_negative_and_attention_scaled():
    """MS-DA-MIL's adaptive gradient reversal: identity forward, backward
    ``-lambda * (max_j a_j - a_i) * grad`` per instance i, so the features move to *raise*
    the domain loss (domain invariance) and the most attended instance not at all."""
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.1, 0.5, 0.3, 0.1], dtype=torch.float64)
    upstream = torch.randn(4, 3, dtype=torch.float64)
    y = _AdaptiveGradReverse.apply(x, a, 2.0)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    scale = torch.tensor([0.4, 0.0, 0.2, 0.4], dtype=torch.float64)[:, None]
    assert torch.allclose(x.grad, -2.0 * scale * upstream, atol=1e-15)
    # in the model: the domain loss's gradient at the embeddings is the reversed one
    torch.manual_seed(0)
    model = build_model("msmil", in_dim=8, n_classes=2, mags=[5.0, 10.0], n_domains=3)
    model = model.double().eval()
    feats = [torch.randn(1, 2, 8, dtype=torch.float64), torch.randn(1, 8, 8, dtype=torch.float64)]
    h, weights = model._embed(feats)
    label, domain = torch.tensor([1]), torch.tensor([2])
    plain = F.cross_entropy(model.classifier((weights * h).sum(dim=1)), label)
    _, loss = model.training_loss(feats, None, label, domain=domain)
    fc = model.fcs[1][0]
    (w_grad_total,) = torch.autograd.grad(loss, fc.weight)
    (w_grad_plain,) = torch.autograd.grad(plain, fc.weight)
    emb = h.detach()[0].requires_grad_(True)
    domain_loss = F.cross_entropy(model.domain_classifier(emb), domain.expand(10))
    (g_emb,) = torch.autograd.grad(domain_loss, emb)
    a = weights.detach()[0, :, 0]
    reversed_grad = -model.domain_lambda * (a.max() - a)[:, None] * g_emb
    # chain the reversed gradient of the 10x instances (rows 2..9) through their fc
    pre = feats[1][0] @ fc.weight.T + fc.bias
    expected = ((pre > 0) * reversed_grad[2:]).T @ feats[1][0]
    assert expected.abs().max() > 1e-5  # attention weights of 10 instances differ little
    assert torch.allclose(w_grad_total - w_grad_plain, expected, rtol=1e-9, atol=1e-14)
