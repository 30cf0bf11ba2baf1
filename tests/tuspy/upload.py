"""Drives intake's tus endpoint with tuspy, the stock tus client from PyPI,
for the API tests (tests/api/tus.rs), which start and kill it.

    upload.py start  CREATE_URL KEY FILE CHUNK_BYTES CHUNKS
        creates an upload, sends CHUNKS chunks, prints "url <URL>" and one
        "offset <N>" line per chunk, then waits (to be killed).
    upload.py resume UPLOAD_URL KEY FILE CHUNK_BYTES
        resumes the upload at the offset the server reports, sends the rest,
        prints "resumed-at <N>", one "offset <N>" per chunk and "file-id <ID>".

Every chunk carries an Upload-Checksum (tuspy's sha1).
"""
import sys

from tusclient import client
from tusclient.uploader import Uploader


def say(*words):
    print(*words, flush=True)


def main():
    mode, url, key, path, chunk = sys.argv[1:6]
    tus = client.TusClient(url, headers={"Authorization": f"Bearer {key}"})
    common = dict(chunk_size=int(chunk), upload_checksum=True, retries=0)
    if mode == "start":
        uploader = Uploader(
            path,
            client=tus,
            metadata={"filename": "clip.mp4", "filetype": "video/mp4"},
            **common,
        )
        uploader.set_url(uploader.create_url())
        say("url", uploader.url)
        for _ in range(int(sys.argv[6])):
            uploader.upload_chunk()
            say("offset", uploader.offset)
        # Killed here by the test, as a client that dies mid-upload.
        sys.stdin.read()
        return
    uploader = Uploader(path, client=tus, url=url, **common)
    say("resumed-at", uploader.offset)
    while uploader.offset < uploader.get_file_size():
        uploader.upload_chunk()
        say("offset", uploader.offset)
    say("file-id", uploader.request.response_headers["intake-file-id"])


if __name__ == "__main__":
    main()
