"""Generates the gRPC modules from proto/ before setuptools collects the packages.

All metadata is in pyproject.toml. When proto/ is not reachable (a build from an sdist that
already holds the generated modules), nothing is generated.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto" / "tandem" / "v1" / "generation.proto"

if PROTO.is_file():
    subprocess.run(
        ["bash", str(HERE / "generate.sh")],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
elif not (HERE / "src" / "tandem_client" / "_proto" / "tandem" / "v1" / "generation_pb2.py").is_file():
    sys.exit(f"tandem-client: neither {PROTO} nor generated modules found")

setup()
