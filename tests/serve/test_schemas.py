"""The API's request shapes and OpenAI error bodies (fast tier)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import ValidationError

from rag.serve.schemas import ApiError, ChatRequest, EmbeddingsRequest, parse_json


def test_the_last_user_message_is_the_question_and_earlier_ones_the_history():
    request = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "What is QuokkaDB?"},
                {"role": "assistant", "content": "An embedded store [1]."},
                {"role": "user", "content": [{"type": "text", "text": "And its "}, {"type": "text", "text": "license?"}]},
            ]
        }
    )
    question, history = request.conversation()
    assert question == "And its license?"
    assert history == [HumanMessage("What is QuokkaDB?"), AIMessage("An embedded store [1].")]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "tool", "content": "x"}], "role must be one of system, user, assistant"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "last message must be the user's"),
        ([{"role": "system", "content": "only a system prompt"}], "last message must be the user's"),
    ],
)
def test_bad_conversations_are_400s(messages, match):
    with pytest.raises(ApiError, match=match) as caught:
        ChatRequest.model_validate({"messages": messages}).conversation()
    assert caught.value.status == 400 and caught.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [{}, {"messages": []}, {"messages": [{"role": "user", "content": "x"}], "n": 2}, {"messages": [{"role": "user"}], "stop": ["a"] * 5}],
)
def test_invalid_fields_are_named_in_a_400(body):
    with pytest.raises(ValidationError) as caught:
        ChatRequest.model_validate(body)
    error = ApiError.from_validation(caught.value)
    assert error.status == 400 and error.param and error.param in error.message


def test_stop_may_be_one_string_and_max_completion_tokens_wins():
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], "stop": "\n", "max_tokens": 9, "max_completion_tokens": 5})
    assert request.stop == ["\n"] and request.answer_tokens == 5
    assert ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}]}).stop == []


def test_embeddings_take_one_text_or_a_bounded_list():
    assert EmbeddingsRequest.model_validate({"input": "a"}).input == ["a"]
    with pytest.raises(ValidationError):
        EmbeddingsRequest.model_validate({"input": []})
    with pytest.raises(ValidationError):
        EmbeddingsRequest.model_validate({"input": [[1, 2, 3]]})  # token arrays are not accepted


def test_malformed_json_is_a_400_in_openai_shape():
    with pytest.raises(ApiError) as caught:
        parse_json(b'{"messages": [')
    body = caught.value.body()
    assert caught.value.status == 400 and set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff\xfe{}"], ids=["deep-array", "deep-object", "not-utf8"])
def test_json_the_parser_cannot_take_is_a_400_not_a_crash(raw):
    with pytest.raises(ApiError) as caught:
        parse_json(raw)
    assert caught.value.status == 400 and caught.value.code == "invalid_json"


def test_error_types_follow_the_status():
    assert ApiError(429, "busy").type == "rate_limit_error"
    assert ApiError(401, "key").type == "authentication_error"
    assert ApiError(500, "bug").type == "server_error"
