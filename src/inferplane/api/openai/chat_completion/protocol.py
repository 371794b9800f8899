"""Request schema of /v1/chat/completions."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferplane.api.openai.common import SamplingRequest, TokenCount
from inferplane.api.openai.parameters import CHAT_UNSUPPORTED
from inferplane.errors import InvalidRequest


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


# OpenAI's rule for a function's name.
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
ToolCallId = Annotated[str, Field(min_length=1, max_length=256)]


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName
    arguments: str  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    """A call an assistant turn made (sent back with the conversation)."""

    model_config = ConfigDict(extra="ignore")
    id: ToolCallId
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None  # assistant
    tool_call_id: ToolCallId | None = None  # tool: the call this answers

    @model_validator(mode="after")
    def _tool_fields(self) -> Self:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has 'tool_calls'")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs 'tool_call_id'")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def prompt(self) -> dict[str, Any]:
        """The message as engines read it: its text, and its tool calls or the call it
        answers (content null only beside tool calls, as OpenAI's API has it)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            if self.content is None:
                out["content"] = None
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName
    description: Annotated[str, Field(max_length=8192)] | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # OpenAI's custom tools (free-text input) are refused by name by this Literal.
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> Self:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required with type 'json_schema'")
        return self


class ChatCompletionRequest(SamplingRequest):
    unsupported = CHAT_UNSUPPORTED

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> Self:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise InvalidRequest("Each tool needs its own function name.", param="tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            if self.tool_choice.function.name not in names:
                raise InvalidRequest(
                    f"tool_choice names '{self.tool_choice.function.name}', which is not "
                    "among the tools.",
                    param="tool_choice",
                )
        elif self.tool_choice in ("auto", "required") and not names:
            raise InvalidRequest(
                f"tool_choice '{self.tool_choice}' needs tools.", param="tool_choice"
            )
        return self

    def sampling(self) -> dict[str, Any]:
        params = super().sampling()
        if self.response_format is not None and self.response_format.type != "text":
            params["response_format"] = self.response_format.model_dump(
                by_alias=True, exclude_none=True
            )
        return params

    def logprobs_asked(self) -> int | None:
        if self.logprobs:
            return self.top_logprobs or 0
        if self.top_logprobs:
            raise InvalidRequest(
                "'top_logprobs' needs 'logprobs' set to true.", param="top_logprobs"
            )
        return None

    def prompt_input(self) -> dict[str, Any]:
        prompt: dict[str, Any] = {
            "messages": [m.prompt() for m in self.messages],
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "stop": self.stop,
        }
        if self.tools:
            # Part of the prompt: rendered into it by chat templates, counted (and
            # billed) as prompt tokens, as OpenAI counts them; with how they may be used.
            prompt["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
            choice = self.tool_choice or "auto"
            prompt["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
            if self.parallel_tool_calls is not None:
                prompt["parallel_tool_calls"] = self.parallel_tool_calls
        return prompt

    def size_hint(self) -> int:
        """About the prompt's bytes (large ones are prepared off the event loop): the
        texts, the calls' arguments and the tools' definitions."""
        calls = sum(len(c.function.arguments) for m in self.messages for c in m.tool_calls or [])
        tools = sum(len(str(t.function.parameters or "")) for t in self.tools or [])
        return sum(len(m.text()) for m in self.messages) + calls + tools
