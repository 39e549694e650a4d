"""Drives a running gearbx-serve with the real `ollama` and `openai` Python packages and prints
what they got as one JSON object (the Rust test asserts on it).

usage: clients.py URL MODEL
"""
import json
import sys

import ollama
import openai

url, model = sys.argv[1], sys.argv[2]
out = {}
opts = {"temperature": 0, "num_predict": 16, "seed": 3}

c = ollama.Client(host=url)
out["tags"] = [m.model for m in c.list().models]
show = c.show(model)
out["show_family"] = show.details.family
g1 = c.generate(model=model, prompt="Name three colours.", options=opts)
g2 = c.generate(model=model, prompt="Name three colours.", options=opts)
out["generate"] = [g1.response, g2.response]
out["generate_done_reason"] = g1.done_reason
out["generate_eval_count"] = g1.eval_count
streamed = "".join(
    p.response for p in c.generate(model=model, prompt="Name three colours.", options=opts, stream=True)
)
out["generate_stream"] = streamed
msgs = [{"role": "user", "content": "Say the word 'apple' and nothing else."}]
chat = c.chat(model=model, messages=msgs, options=opts)
out["chat"] = chat.message.content
out["chat_role"] = chat.message.role
chat_stream = "".join(p.message.content for p in c.chat(model=model, messages=msgs, options=opts, stream=True))
out["chat_stream"] = chat_stream
# A second turn that refers to the first.
turn2 = msgs + [{"role": "assistant", "content": chat.message.content},
                {"role": "user", "content": "Which word did you just say?"}]
out["chat_turn2"] = c.chat(model=model, messages=turn2, options=opts).message.content
stop = c.generate(model=model, prompt="Count: 1, 2, 3,", raw=True,
                  options={"temperature": 0, "num_predict": 24, "stop": [" 6"]})
out["stop"] = stop.response
try:
    c.generate(model="no-such-model", prompt="hi")
    out["unknown_model"] = None
except ollama.ResponseError as e:
    out["unknown_model"] = e.status_code

o = openai.OpenAI(base_url=url + "/v1", api_key="unused")
out["models"] = [m.id for m in o.models.list().data]
r = o.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=16, seed=3)
out["oa_chat"] = r.choices[0].message.content
out["oa_finish"] = r.choices[0].finish_reason
out["oa_usage"] = r.usage.completion_tokens
parts = []
telemetry = []
for ch in o.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=16,
                                    seed=3, stream=True):
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
    extra = getattr(ch, "model_extra", None) or {}
    if "gearbx" in extra:
        telemetry.append(extra["gearbx"])
out["oa_chat_stream"] = "".join(parts)
out["oa_telemetry"] = telemetry
comp = o.completions.create(model=model, prompt="1, 2, 3,", temperature=0, max_tokens=8)
out["oa_completion"] = comp.choices[0].text
try:
    o.chat.completions.create(model=model, messages=msgs, temperature=0, top_p=5)
    out["oa_bad_top_p"] = None
except openai.BadRequestError as e:
    out["oa_bad_top_p"] = e.status_code
lp = o.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=8,
                               logprobs=True, top_logprobs=3)
out["oa_logprobs"] = [
    {"token": c.token, "logprob": c.logprob, "top": [[t.token, t.logprob] for t in c.top_logprobs]}
    for c in lp.choices[0].logprobs.content
]
out["oa_logprobs_tokens"] = lp.usage.completion_tokens
print(json.dumps(out))
