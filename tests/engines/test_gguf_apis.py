"""/v1/messages and /v1/responses answered by a real local engine: the demo GGUF (its
answer is deterministic) in a gguf worker behind a real router process, called with the
official anthropic and openai SDKs, streamed and not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from plugins.gguf.demo import REPLY, SENTENCE, write_demo_model
from router.testing import RouterProcess

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProcess]:
    base = tmp_path_factory.mktemp("gguf_apis")
    model = write_demo_model(base / "tiny.gguf")
    config = base / "config.yaml"
    config.write_text(f"""
routing: {{retries: 0}}
backends:
  - name: local
    provider: gguf
    n_threads: 1
    n_threads_batch: 1
    max_tokens_limit: 64
    models:
      - {{name: chat, path: {model}, n_ctx: 512, preload: true}}
""")
    with RouterProcess(config, env={"PYTHONPATH": str(ROOT)}) as proc:
        yield proc


def test_messages_create_and_stream(router: RouterProcess) -> None:
    client = anthropic.Anthropic(base_url=router.url, api_key="none", max_retries=0, timeout=60)
    message = client.messages.create(model="chat", max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len(SENTENCE) and message.usage.input_tokens > 0
    with client.messages.stream(model="chat", max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == REPLY and final.content[0].text == REPLY  # type: ignore[union-attr]
    assert final.usage.output_tokens == len(SENTENCE)
    count = client.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == message.usage.input_tokens  # the engine's tokenizer, not an estimate
    assert count.model_extra == {}
    cut = client.messages.create(model="chat", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3


def test_responses_create_and_stream(router: RouterProcess) -> None:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="none", max_retries=0, timeout=60)
    response = client.responses.create(model="chat", input="hi", max_output_tokens=32)
    assert response.output_text == REPLY and response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == len(SENTENCE)
    with client.responses.stream(model="chat", input="hi", max_output_tokens=32,
                                 previous_response_id=response.id) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REPLY and final.output_text == REPLY
    assert client.responses.retrieve(final.id).previous_response_id == response.id
