"""The Python client of the presigned-upload bench: it moves the bytes of
both sides, so that the two differ only in where the parts go.

    client.py direct ENDPOINT BUCKET KEY SIZE PART
        one multipart upload of SIZE bytes with boto3 straight to the S3
        server, parts of PART bytes one after another (credentials from
        S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY);
    client.py presigned < {"size": …, "part_size": …, "urls": [...]}
        PUTs each part to its presigned URL with requests, in order.

Both make the same bytes (an MP4 header, then random) and print one JSON
line: {"seconds": the upload's wall time, "etags": the parts' ETags}. Any
error ends the client with a non-zero status.
"""
import json
import os
import sys
import time

HEADER = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"


def parts(size, part):
    """The (number, bytes) of each part: one random block reused, the file's
    header at the start of the first."""
    block = os.urandom(part)
    for i, off in enumerate(range(0, size, part)):
        data = block[: min(part, size - off)]
        yield i + 1, (HEADER + data[len(HEADER):] if i == 0 else data)


def direct(endpoint, bucket, key, size, part):
    import boto3
    from botocore.config import Config

    # Payloads unsigned (UNSIGNED-PAYLOAD), as the parts PUT to intake's
    # presigned URLs are: over plain http botocore would otherwise hash every
    # part it sends, work the presigned side never does.
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=os.environ["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["S3_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path", "payload_signing_enabled": False},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))
    t0 = time.perf_counter()
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for n, data in parts(size, part):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=data)
        done.append({"PartNumber": n, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": done})
    return time.perf_counter() - t0, [p["ETag"] for p in done]


def presigned(size, part, urls):
    import requests

    http = requests.Session()
    t0 = time.perf_counter()
    etags = []
    for (_, data), url in zip(parts(size, part), urls, strict=True):
        r = http.put(url, data=data)
        r.raise_for_status()
        etags.append(r.headers["ETag"])
    return time.perf_counter() - t0, etags


if sys.argv[1:2] == ["direct"]:
    endpoint, bucket, key, size, part = sys.argv[2:]
    seconds, etags = direct(endpoint, bucket, key, int(size), int(part))
elif sys.argv[1:] == ["presigned"]:
    ask = json.load(sys.stdin)
    seconds, etags = presigned(ask["size"], ask["part_size"], ask["urls"])
else:
    sys.exit("usage: client.py direct ENDPOINT BUCKET KEY SIZE PART | client.py presigned")
print(json.dumps({"seconds": seconds, "etags": etags}))
