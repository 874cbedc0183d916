# LitServe docs "streaming": predict and encode_response are generators; stream=True on the LitAPI.
import os

import fulmen.serve as ls


class SimpleStreamingAPI(ls.LitAPI):
    def setup(self, device) -> None:
        self.model = lambda x, y: x * y

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        for i in range(1, 4):
            yield self.model(i, x)

    def encode_response(self, output_stream):
        for output in output_stream:
            yield {"output": output}


if __name__ == "__main__":
    api = SimpleStreamingAPI(stream=True)
    server = ls.LitServer(api)
    server.run(port=int(os.environ.get("PORT", 8000)))
