"""A fake Docker client for unit tests of the container runner, and a tiny real image for
tests against the engine: ``/probe``, a static C program standing in for a container's
programs (``matlab -batch``, ``echo``, ``exit``, ``env``, ``id``, ``interfaces``, ``sleep``)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import docker.errors


class FakeContainer:
    def __init__(self, output=b"one\ntwo\n", code=0, *, fail_start=None, fail_wait=None):
        self.output, self.code = output, code
        self.fail_start, self.fail_wait = fail_start, fail_wait
        self.interrupt_logs = False
        self.events: list[str] = []
        self.files: dict[str, bytes] = {}

    def start(self):
        self.events.append("start")
        if self.fail_start:
            raise self.fail_start

    def logs(self, stream, follow):
        assert stream and follow
        self.events.append("logs")
        for i in range(0, len(self.output), 5):
            if self.interrupt_logs and i:
                raise KeyboardInterrupt
            yield self.output[i : i + 5]

    def wait(self):
        self.events.append("wait")
        if self.fail_wait:
            raise self.fail_wait
        return {"StatusCode": self.code}

    def kill(self):
        self.events.append("kill")

    def remove(self, force=False):
        assert force
        self.events.append("remove")

    def get_archive(self, path):
        if path not in self.files:
            raise docker.errors.NotFound("no such file")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size = len(self.files[path])
            tar.addfile(info, io.BytesIO(self.files[path]))
        return iter([buf.getvalue()]), {}


class FakeAPI:
    def __init__(self):
        self.removed: list[str] = []

    def remove_container(self, name, force=False):
        self.removed.append(name)


class FakeClient:
    """Records containers.create's arguments; ``fail_create`` is raised by create."""

    def __init__(self, container=None, fail_create=None):
        self.container = container or FakeContainer()
        self.fail_create = fail_create
        self.calls: list[tuple[str, dict]] = []
        self.containers = self
        self.api = FakeAPI()

    def create(self, image, **kwargs):
        self.calls.append((image, kwargs))
        if self.fail_create:
            raise self.fail_create
        return self.container


PROBE_C = r"""
/* A stand-in for a container's programs: tiny, static, no libc files needed in the image. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void interfaces(void) {
    char line[512];
    FILE *f = fopen("/proc/net/dev", "r");
    if (!f) { puts("interfaces: ?"); return; }
    printf("interfaces:");
    for (int n = 0; fgets(line, sizeof line, f); n++) {
        char *colon = strchr(line, ':');
        if (n < 2 || !colon) continue;
        *colon = 0;
        char *name = line;
        while (*name == ' ') name++;
        printf(" %s", name);
    }
    puts("");
    fclose(f);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "-batch")) {   /* MATLAB: matlab -batch STATEMENT */
        const char *lic = getenv("MLM_LICENSE_FILE");
        if (lic && strchr(lic, '@')) {
            printf("Licensing MATLAB using the license manager %s.\n", lic);
        } else if (lic) {
            printf("Licensing MATLAB using license file %s.\n", lic);
            FILE *f = fopen(lic, "r");
            char first[256] = "";
            if (f && fgets(first, sizeof first, f)) printf("license file: %s", first);
            if (f) fclose(f);
            puts(fopen(lic, "a") ? "license file: writable" : "license file: read-only");
        }
        interfaces();
        printf("batch: %s\n", argv[2]);
        if (strstr(argv[2], "error(")) {  /* stdout: Docker does not order stdout vs stderr */
            printf("Error using batch: boom\n");
            return 1;
        }
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "echo")) {
        for (int i = 2; i < argc; i++) puts(argv[i]);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "exit")) {
        for (int i = 3; i < argc; i++) fprintf(stderr, "%s\n", argv[i]);
        return atoi(argv[2]);
    }
    if (argc >= 3 && !strcmp(argv[1], "env")) {
        const char *v = getenv(argv[2]);
        puts(v ? v : "(unset)");
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "id")) {
        printf("%d:%d\n", (int)getuid(), (int)getgid());
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "interfaces")) {
        interfaces();
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "sleep")) {
        puts("sleeping");
        sleep(atoi(argv[2]));
        return 0;
    }
    fprintf(stderr, "probe: unknown command\n");
    return 2;
}
"""

PROBE_FILE = "/etc/probe-note"


def leftovers(client, image: str) -> list[str]:
    """Containers (running or not) made from ``image`` (a tag, or a name never pulled)."""
    try:
        image_id = client.images.get(image).id
    except docker.errors.ImageNotFound:
        image_id = None
    return [
        c["Id"][:12]
        for c in client.api.containers(all=True)
        if c.get("Image") == image or (image_id and c.get("ImageID") == image_id)
    ]


def build_probe_image(client, folder: Path) -> str | None:
    """Build the probe image in ``folder``; returns its tag, or None with the reason printed
    when gcc cannot make a static program here (the caller skips)."""
    if shutil.which("gcc") is None:
        return None
    (folder / "probe.c").write_text(PROBE_C)
    built = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(folder / "probe"), str(folder / "probe.c")],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        return None
    (folder / "note").write_text("written into the image\n")
    (folder / "Dockerfile").write_text(
        f'FROM scratch\nCOPY probe /probe\nCOPY note {PROBE_FILE}\nENTRYPOINT ["/probe"]\n'
    )
    tag = f"kilosort-docker-test/probe:{uuid.uuid4().hex[:12]}"
    client.images.build(path=str(folder), tag=tag, rm=True, forcerm=True)
    return tag
