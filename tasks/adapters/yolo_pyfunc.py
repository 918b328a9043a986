"""The MLflow model a trainyard run logs: best.pt behind MLflow's pyfunc interface.

MLflow saves this file itself into the logged model ("models from code"), so a model loads
wherever ``mlflow`` and ``ultralytics`` are installed, with or without trainyard:

    model = mlflow.pyfunc.load_model("models:/trainyard@champion")
    boxes = model.predict(pandas.DataFrame({"image": ["bus.jpg"]}), params={"conf": 0.4})

Input: a DataFrame whose ``image`` column holds a file path, an http(s) URL, or the base64 text
of an encoded image (PNG, JPEG; what a REST client can send). Output: one row per detected box:
``image`` (the input row), ``class_id``, ``class_name``, ``confidence`` and ``x1 y1 x2 y2`` in
pixels of the original image. ``params``: ``conf``, ``iou``, ``imgsz`` (default: the training's).

Importing this module as part of trainyard does nothing; MLflow runs it as a model file
(under a module name of its own), which is when it hands the model to ``set_model``.
"""

from typing import Any

WEIGHTS = "weights"  # the artifact key of best.pt
INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("image", "class_id", "class_name", "confidence", "x1", "y1", "x2", "y2")


def _decode(value: str) -> Any:
    """A path or URL as Ultralytics reads it; anything else is base64 of an encoded image."""
    import os

    if value.startswith(("http://", "https://")) or os.path.exists(value):
        return value
    import base64
    import io

    from PIL import Image

    try:
        return Image.open(io.BytesIO(base64.b64decode(value, validate=True))).convert("RGB")
    except Exception as exc:  # binascii.Error, PIL.UnidentifiedImageError
        shown = value if len(value) < 80 else value[:77] + "..."
        raise ValueError(
            f"image {shown!r} is neither an existing file, an http(s) URL, nor base64 of a PNG/JPEG ({exc})"
        ) from None


def _python_model() -> Any:
    import pandas as pd
    from mlflow.pyfunc import PythonModel

    class YoloDetector(PythonModel):
        def load_context(self, context: Any) -> None:
            from ultralytics import YOLO

            self.model = YOLO(context.artifacts[WEIGHTS], task="detect")
            self.imgsz = int((context.model_config or {}).get("imgsz", 640))

        # MLflow reads these hints: a DataFrame in and out (the signature logged with the model is the schema)
        def predict(
            self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
        ) -> pd.DataFrame:
            params = params or {}
            images = [_decode(str(v)) for v in model_input[INPUT_COLUMN]]
            rows: list[tuple[Any, ...]] = []
            if images:
                results: Any = self.model.predict(
                    images,
                    conf=float(params.get("conf", 0.25)),
                    iou=float(params.get("iou", 0.7)),
                    imgsz=int(params.get("imgsz") or self.imgsz),
                    device=params.get("device"),  # None: the best available, as in Ultralytics
                    verbose=False,
                )
                for i, result in enumerate(results):
                    names = result.names
                    for cls, conf, xyxy in zip(
                        result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist(), strict=True
                    ):
                        rows.append((i, int(cls), str(names[int(cls)]), float(conf), *map(float, xyxy)))
            return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype(
                {"image": "int64", "class_id": "int64", "class_name": "str"}
            )

    return YoloDetector()


if __name__.startswith("code_model_"):  # MLflow loading this file as a logged model
    import mlflow.models

    mlflow.models.set_model(_python_model())
