import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One compute thread per process unless OMP_NUM_THREADS says otherwise: the suite runs servers, Ray workers
# and CLI subprocesses beside each other on few cores, where the small test models' intra-op threads
# mostly wait for one another (a decode step is several times slower with two threads on a busy core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from star_runtime.config import RunConfig  # noqa: E402
from star_runtime.engine import Engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The offline benchmark data: $STAR_RUNTIME_DATA, else ../shared/data beside the checkout.
DATA = Path(os.environ.get("STAR_RUNTIME_DATA") or ROOT.parent / "shared" / "data")
if os.environ.get("STAR_RUNTIME_REQUIRE_DATA") == "1" and not (DATA / "ruler").is_dir():
    raise RuntimeError(f"benchmark data not found at {DATA}; set STAR_RUNTIME_DATA")


GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(items):
    """tests/gpu/ is the `gpu` marker's; without a CUDA GPU those tests are skipped, with the reason shown."""
    for item in items:
        if "/tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if not GPUS:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu tests/gpu` on one"))


def needs_data(sub: str = "ruler"):
    return pytest.mark.skipif(not (DATA / sub).is_dir(), reason=f"needs the benchmark data folder ({DATA}/{sub})")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (real raylet, real worker processes)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def random_ids(n: int, seed: int, low: int = 100, high: int = 40000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n,), generator=g).tolist()


def run_ids(engine: Engine, ctx: list[int], query: list[int], new_tokens: int, index=0, **kw):
    """Run token ids straight through an engine's workers (the run's mode); returns the host's reply, with the
    logits of every step. kw: more Request fields (extra_eos, prefill_logits...)."""
    from star_runtime.parallel.worker import Request

    return engine.run(Request(index, ctx, query, new_tokens, keep_logits=True, **kw))


def make_engine(model="random:tiny", **kw) -> Engine:
    """An engine on a (tiny random) model. Exactness tests compare full-length generations, so EOS is ignored
    unless a test asks for it (ignore_eos=False)."""
    kw.setdefault("ignore_eos", True)
    return Engine(RunConfig(model_path=model, **kw))


def assert_same_steps(a_logits: list, b_logits: list, atol: float = 1e-4) -> None:
    """Two runs' per-step logits agree: first the same, non-zero number of steps, then every step within atol."""
    assert len(a_logits) == len(b_logits), (len(a_logits), len(b_logits))
    assert len(a_logits) > 0, "no steps to compare"
    for step, (a, b) in enumerate(zip(a_logits, b_logits)):
        assert a.shape == b.shape, (step, a.shape, b.shape)
        err = (a.float() - b.float()).abs().max().item()
        assert err <= atol, f"step {step}: max |logit difference| {err:.3g} > {atol}"
