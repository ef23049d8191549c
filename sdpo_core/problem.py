"""The problem spec: what the user wants solved and how an answer is checked."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdpo_core.verifiers import VerifierSpec


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    role: Literal["system", "user", "assistant"]
    content: str


class Problem(BaseModel):
    """One hard problem: a prompt (or chat messages), an optional system prompt and a verifier spec."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    id: str | None = Field(default=None, max_length=200, description="Your own label for the problem.")
    prompt: str | None = Field(default=None, min_length=1, description="The question, as one user message.")
    messages: list[Message] | None = Field(
        default=None, min_length=1, description="The conversation to continue; the last message is the user's."
    )
    system_prompt: str | None = Field(default=None, description="A system message placed first.")
    verifier: VerifierSpec

    @model_validator(mode="after")
    def _one_way_to_ask(self) -> Problem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("messages: the last message must have role 'user'")
        if self.messages is not None and self.system_prompt is not None and self.messages[0].role == "system":
            raise ValueError("system_prompt: the messages already start with a system message")
        return self

    def chat(self, question: str | None = None) -> list[dict[str, str]]:
        """The conversation the model sees, with the last user message replaced by `question` if given."""
        messages = [m.model_dump() for m in self.messages] if self.messages else [{"role": "user", "content": ""}]
        if self.prompt is not None:
            messages[-1]["content"] = self.prompt
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if question is not None:
            messages[-1] = {"role": "user", "content": question}
        return messages

    @property
    def question(self) -> str:
        """The last user message: the part the self-teacher's reprompt extends."""
        return self.chat()[-1]["content"]
