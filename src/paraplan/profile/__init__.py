"""`paraplan profile`: measure the user's own device and network and make the cost model use the numbers.

    hardware.py       the hardware profile file: format, loading, applying it to a cluster and a calibration
    sweeps.py         what is measured: shapes, sequence lengths, message sizes per sweep preset (data)
    timing.py         timing one benchmark on CPU or CUDA (warm-up, synchronisation, repeats)
    compute_bench.py  GEMM, attention (SDPA), memory bandwidth, element-wise microbenchmarks
    comm_bench.py     collectives over torch.distributed (gloo / NCCL), local processes or torchrun
    fit.py            measurements -> GPU entry, calibration constants, curves
    runner.py         the sweep: partial results file (resumable), time budget, progress bar
    check.py          a real transformer layer forward/backward vs paraplan's prediction
    cli.py            the `paraplan profile` command

Only hardware.py and fit.py are imported by `paraplan estimate --hardware`; torch is imported by the benchmark
modules alone, so paraplan runs without it (torch is the optional extra `paraplan[torch]`).
"""
