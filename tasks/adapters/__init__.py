"""The only modules that touch third-party systems, one system per module.

    s3.py                   S3 / MinIO (boto3)
    docker_engine.py        the Docker runner (docker SDK)
    mlflow_tracking.py      the MLflow tracking server or store (mlflow)
    nvml.py                 GPU telemetry (pynvml)
    kubernetes_manifest.py  rendered Kubernetes Jobs, checked (kubernetes client models)
    ultralytics_trainer.py  the training process (ultralytics, torch)
    torch_environment.py    the training interpreter's torch/CUDA build (torch, in a child)
    git_dvc.py              git and dvc command lines

Everything else in ``tasks/`` is plain domain code that imports these, never the
libraries: ruff's banned-api rule (TID251, pyproject.toml) fails otherwise.
"""
