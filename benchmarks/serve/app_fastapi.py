"""A plain single-process FastAPI + uvicorn app that calls the model in its handler (the floor to compare with)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import uvicorn
from fastapi import FastAPI, Request
from models import build

torch.set_num_threads(1)
model = build(os.environ.get("MODEL", "linear"))
app = FastAPI()


@app.post("/predict")
async def predict(request: Request):
    body = await request.json()
    with torch.inference_mode():
        y = model(torch.tensor(body["input"], dtype=torch.float32)[None])[0]
    return {"output": y.tolist()}


@app.get("/health")
async def health():
    return "ok"


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
