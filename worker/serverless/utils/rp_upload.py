"""`rp_upload`: put a job's files in S3-compatible storage and return presigned URLs, as
the SDK does. Needs boto3 (`pip install 'gpu-worker[s3]'`) when a bucket is configured
(BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, or `bucket_creds`);
without a bucket, files are saved under a local folder and that path is returned (the
SDK's fallback for local runs)."""
from __future__ import annotations

import io
import os
import shutil
import sys
import time
import uuid

PRESIGN_SECONDS = 604800


def _client(bucket_creds: dict | None = None):
    """A boto3 S3 client, or None when no bucket is configured."""
    if bucket_creds:
        endpoint, key_id, secret = (bucket_creds["endpointUrl"], bucket_creds["accessId"],
                                    bucket_creds["accessSecret"])
    else:
        endpoint, key_id, secret = (os.environ.get("BUCKET_ENDPOINT_URL"),
                                    os.environ.get("BUCKET_ACCESS_KEY_ID"),
                                    os.environ.get("BUCKET_SECRET_ACCESS_KEY"))
    if not endpoint:
        return None
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ImportError("rp_upload needs boto3 to upload to a bucket: "
                          "pip install 'gpu-worker[s3]' (or pip install boto3)") from None
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", retries={"max_attempts": 3}))


def _local(file_name: str, directory: str, source: str | None = None,
           data: bytes | None = None) -> str:
    print(f"No bucket endpoint set, saving to disk folder '{directory}'.", file=sys.stderr)
    os.makedirs(directory, exist_ok=True)
    path = f"{directory}/{file_name}"
    # The SDK writes wherever `../` in the name leads; this fallback stays in its folder.
    inside = os.path.realpath(directory)
    if os.path.commonpath([inside, os.path.realpath(path)]) != inside:
        raise ValueError(f"file name {file_name!r} leads outside the folder {directory!r}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if source:
        shutil.copyfile(source, path)
    elif data is not None:
        with open(path, "wb") as out:
            out.write(data)
    else:
        raise ValueError("Either source_path or file_data must be provided")
    return path


def _presign(client, bucket: str, key: str) -> str:
    return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                         ExpiresIn=PRESIGN_SECONDS)


def upload_image(job_id, image_location, result_index=0, results_list=None,
                 bucket_name: str | None = None) -> str:
    name = str(uuid.uuid4())[:8]
    ext = os.path.splitext(image_location)[1]
    with open(image_location, "rb") as f:
        data = f.read()
    client = _client()
    if client is None:
        url = _local(f"{name}{ext}", "simulated_uploaded", data=data)
    else:
        bucket = bucket_name or time.strftime("%m-%y")
        key = f"{job_id}/{name}{ext}"
        client.put_object(Bucket=bucket, Key=key, Body=data,
                          ContentType="image/" + ext.lstrip("."))
        url = _presign(client, bucket, key)
    if results_list is not None:
        results_list[result_index] = url
    return url


def files(job_id, file_list) -> list:
    return [upload_image(job_id, path) for path in file_list]


def upload_file_to_bucket(file_name: str, file_location: str, bucket_creds: dict | None = None,
                          bucket_name: str | None = None, prefix: str | None = None,
                          extra_args: dict | None = None) -> str:
    client = _client(bucket_creds)
    if client is None:
        return _local(file_name, "local_upload", source=file_location)
    bucket = bucket_name or time.strftime("%m-%y")
    key = f"{prefix}/{file_name}" if prefix else file_name
    client.upload_file(Filename=file_location, Bucket=bucket, Key=key,
                       ExtraArgs=extra_args or None)
    return _presign(client, bucket, key)


def upload_in_memory_object(file_name: str, file_data: bytes, bucket_creds: dict | None = None,
                            bucket_name: str | None = None, prefix: str | None = None) -> str:
    client = _client(bucket_creds)
    if client is None:
        return _local(file_name, "local_upload", data=file_data)
    bucket = bucket_name or time.strftime("%m-%y")
    key = f"{prefix}/{file_name}" if prefix else file_name
    client.upload_fileobj(io.BytesIO(file_data), bucket, key)
    return _presign(client, bucket, key)
