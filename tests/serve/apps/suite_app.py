"""One server, several endpoints: the engine's behaviour tests share it (one start instead of many).

Run: ``python suite_app.py PORT FLAG_FILE``. ``FLAG_FILE`` existing makes the /sick endpoint's health() fail.
"""

import os
import sys
import time

import fulmen.serve as ls


class Square(ls.LitAPI):
    def setup(self, device):
        self.device = device

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        return {"output": x**2, "pid": os.getpid()}


class Batched(ls.LitAPI):
    def decode_request(self, request):
        return request["input"]

    def predict(self, xs):
        return [{"output": 2 * x, "batch": len(xs)} for x in xs]


class Auto(ls.LitAPI):
    def decode_request(self, request):
        return request["input"]

    def predict(self, xs):
        time.sleep(0.05)  # a model that takes 50 ms per call: batching pays under load
        return [{"output": x, "batch": len(xs)} for x in xs]


class Failing(ls.LitAPI):
    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        if x == "http":
            from fastapi import HTTPException

            raise HTTPException(status_code=422, detail="input 'http' is refused")
        if x < 0:
            raise ValueError(f"negative input {x}")
        return {"output": x}


class Slow(ls.LitAPI):
    def decode_request(self, request):
        return request["sleep"]

    def predict(self, seconds):
        time.sleep(seconds)
        return {"slept": seconds, "pid": os.getpid()}


class Stream(ls.LitAPI):
    def decode_request(self, request):
        return request["n"]

    def predict(self, n):
        yield from range(n)

    def encode_response(self, outputs):
        for i in outputs:
            yield {"i": i}


class Echo(ls.LitAPI):
    def predict(self, messages):
        for word in messages[-1]["content"].split():
            yield word + " "


class Sick(ls.LitAPI):
    def __init__(self, flag, **kwargs):
        super().__init__(**kwargs)
        self.flag = flag

    def predict(self, x):
        return x

    def health(self):
        return not os.path.exists(self.flag)


if __name__ == "__main__":
    port, flag = int(sys.argv[1]), sys.argv[2]
    apis = [
        Square(api_path="/predict"),
        Batched(api_path="/batched", max_batch_size=4, batch_timeout=0.3),
        Failing(api_path="/fail"),
        Slow(api_path="/slow", request_timeout=2.0),
        Stream(api_path="/stream", stream=True),
        Echo(spec=ls.OpenAISpec()),
        Sick(flag, api_path="/sick"),
        Auto(api_path="/auto", max_batch_size=8, batch_timeout="auto"),
    ]
    server = ls.LitServer(apis, accelerator="cpu", max_payload_size=10_000, api_key="s3cret", timeout=20)
    server.run(port=port, log_level="warning")
