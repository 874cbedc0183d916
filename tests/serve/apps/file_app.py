"""A file defining a LitAPI, for `fulmen serve file_app.py`."""

import fulmen.serve as ls


class Reverse(ls.LitAPI):
    def decode_request(self, request):
        return request["text"]

    def predict(self, text):
        return text[::-1]

    def encode_response(self, output):
        return {"reversed": output}
