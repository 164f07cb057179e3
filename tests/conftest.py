"""Test setup shared by every test file.

``TRITON_INTERPRET=1`` must be set before triton is first imported: it makes the Triton kernels run on
CPU tensors (see docs/kernels.md). Tests stay on few threads so two pytest workers do not fight.

``FASTGPT_TEST_DEVICE=cuda`` (GPU machines; ``benchmarks/gpu_suite.sh``) runs the device-agnostic tests,
the kernel tests above all, natively: no interpreter, and tensors made without a device land on the GPU.
``FASTGPT_KERNEL_ARCH=sm80|sm90`` on CPU is the "GPU tiles" mode: the interpreter runs the tile tables a
GPU of that family would use (``tests/kernel_modes.py`` says what each mode changes for the tests).
"""

import os

TEST_DEVICE = os.environ.get("FASTGPT_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))
if TEST_DEVICE != "cpu":
    if not torch.cuda.is_available():
        raise pytest.UsageError(f"FASTGPT_TEST_DEVICE={TEST_DEVICE}: CUDA is not available here")
    torch.set_default_device(TEST_DEVICE)
    if os.environ.get("FASTGPT_KERNEL_ARCH"):
        raise pytest.UsageError(
            "FASTGPT_KERNEL_ARCH forces GPU tiles under the interpreter (CPU runs); with "
            f"FASTGPT_TEST_DEVICE={TEST_DEVICE} the GPU's own architecture decides: unset it"
        )


def pytest_sessionfinish(session, exitstatus):
    """A test skipped because a dependency failed to import fails the run: CI must not go green on
    tests that never ran."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    import_skips = [
        r for r in skipped if "could not import" in str(r.longrepr) or "No module named" in str(r.longrepr)
    ]
    if import_skips:
        reporter.write_line(
            f"ERROR: {len(import_skips)} test(s) skipped because a dependency failed to import", red=True
        )
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small prepared pretraining corpus (``train_support.make_corpus``), built once per test module."""
    from train_support import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def single_thread():
    """Torch on one thread for the test (``pytestmark = pytest.mark.usefixtures("single_thread")``):
    runs compared step by step, and timings, do not depend on the machine's core count."""
    from train_support import one_thread

    with one_thread():
        yield
