"""sdpo_core: test-time Self-Distillation Policy Optimization on a per-problem LoRA adapter.

This package imports without torch: the problem and verifier specs, the settings, the events and the discovery
statistics are plain Python, so the client SDK and the HTTP schemas can share them. The torch parts (loss,
policy, engines, loop) are imported from their modules directly.
"""

from sdpo_core.problem import Message, Problem
from sdpo_core.verifiers import Verdict, VerifierSpec, build_verifier

__all__ = ["Message", "Problem", "Verdict", "VerifierSpec", "build_verifier"]
