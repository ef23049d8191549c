"""Running verifiers: the pool of verifier processes, the sandbox for untrusted code and their settings.

The specs (sdpo_core.verifiers) say what to check and are shared with the light client; this package runs them and
is needed only where attempts are verified: a worker, `sdpo solve`, `sdpo verify`. It needs no Redis.

    verify.py              what callers use: verify_function (the loop's batch verifier), verify_answer, shared_pool
    pool.py                VerifierPool: spawned processes, one lane per job, a hard time limit per verification
    subprocess_sandbox.py  SubprocessSandbox: one run of untrusted Python (sdpo_core.verifiers.sandbox's protocol)
    isolation.py           how a run is wrapped: bubblewrap, unshare or rlimits, and the minimum the operator accepts
    uids.py                uids leased to runs so that RLIMIT_NPROC holds and leftovers can be killed
    hardening.py           what our processes do so that the code they run cannot read their secrets
"""
