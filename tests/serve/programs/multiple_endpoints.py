# LitServe docs "multiple endpoints": a list of LitAPIs, each on its own api_path with its own workers.
import os

import fulmen.serve as ls


class SentimentAPI(ls.LitAPI):
    def setup(self, device):
        self.words = {"good": 1, "great": 1, "bad": -1, "awful": -1}

    def decode_request(self, request):
        return request["text"]

    def predict(self, text):
        score = sum(self.words.get(w, 0) for w in text.lower().split())
        return "positive" if score > 0 else "negative" if score < 0 else "neutral"

    def encode_response(self, output):
        return {"sentiment": output}


class LengthAPI(ls.LitAPI):
    def decode_request(self, request):
        return request["text"]

    def predict(self, texts):  # batched: a list of texts
        return [len(text) for text in texts]

    def encode_response(self, output):
        return {"length": output}


if __name__ == "__main__":
    sentiment = SentimentAPI(api_path="/sentiment")
    length = LengthAPI(api_path="/length", max_batch_size=2, batch_timeout=0.01)
    server = ls.LitServer([sentiment, length], accelerator="cpu")
    server.run(port=int(os.environ.get("PORT", 8000)))
