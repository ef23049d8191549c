"""A toy discovery method added the way the registry says (one class, one registry line), loaded into every
process of the method-registry test through SDPO_METHOD_MODULES: the prompt carries only the latest feedback."""

from sdpo_core.methods import DiscoveryMethod, distinct_feedback, register


@register
class LatestFeedback(DiscoveryMethod):
    name = "latest-feedback"
    summary = "the prompt plus only the most recent distinct feedback, frozen model"

    def prompt_feedback(self) -> list[str] | None:
        return distinct_feedback(self.run.attempts)[-1:]
