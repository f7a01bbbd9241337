"""Start-up noise of CPU runs, printed once per rank: torch's "No CUDA runtime is found, using CUDA_HOME=..."
warning (DeepSpeed imports torch.utils.cpp_extension), DeepSpeed's "deepspeed_shm_comm_op built successfully"
op-build line and its import-time FutureWarnings. None of it is actionable on a CPU run; on GPUs it is kept
(there a CUDA_HOME or op-build message can matter)."""
import contextlib
import io
import logging
import sys
import warnings


@contextlib.contextmanager
def quiet_cpu_startup(on_cpu: bool):
    if not on_cpu:
        yield
        return
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    buffer = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        # ... and, for the rest of the run, torch's FutureWarning each time DeepSpeed's ZeRO calls a collective
        # torch renamed (`torch.distributed.all_gather_into_tensor` is deprecated ...): DeepSpeed's to fix.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
        # DeepSpeed's log handler binds sys.stdout when it is first imported: inside this block, the buffer.
        for handler in logging.getLogger("DeepSpeed").handlers:
            if getattr(handler, "stream", None) is buffer:
                handler.setStream(sys.stdout)
