"""A program with a slow start-up (many stdlib imports, a big dict) that then
answers requests from its data: the warm-start workload.

    warmapp.py DIR ENTRIES

Once ready it writes DIR/ready and waits for SIGUSR1. On each SIGUSR1 it reads
DIR/request (keys, one per line) and writes the sum of their values to
DIR/answer-HOSTPID (atomically), HOSTPID being its PID as the host sees it
(/proc/self): copies restored into their own PID namespaces share the dumped
PID, not that one. A request "quit" makes it exit at once.
"""

from __future__ import annotations

import argparse  # noqa: F401 - imported for the start-up cost
import asyncio  # noqa: F401
import calendar  # noqa: F401
import collections  # noqa: F401
import csv  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import difflib  # noqa: F401
import email.mime.multipart  # noqa: F401
import email.parser  # noqa: F401
import fractions  # noqa: F401
import ftplib  # noqa: F401
import gettext  # noqa: F401
import gzip  # noqa: F401
import hashlib  # noqa: F401
import html.parser  # noqa: F401
import http.client  # noqa: F401
import http.cookiejar  # noqa: F401
import http.server  # noqa: F401
import imaplib  # noqa: F401
import inspect  # noqa: F401
import ipaddress  # noqa: F401
import json  # noqa: F401
import logging.handlers  # noqa: F401
import lzma  # noqa: F401
import mailbox  # noqa: F401
import multiprocessing  # noqa: F401
import os
import pathlib  # noqa: F401
import pickle  # noqa: F401
import pydoc  # noqa: F401
import random
import signal
import smtplib  # noqa: F401
import sqlite3  # noqa: F401
import statistics  # noqa: F401
import sys
import tarfile  # noqa: F401
import textwrap  # noqa: F401
import tkinter  # noqa: F401
import typing  # noqa: F401
import unittest  # noqa: F401
import urllib.request  # noqa: F401
import uuid  # noqa: F401
import xml.dom.minidom  # noqa: F401
import xml.etree.ElementTree  # noqa: F401
import xmlrpc.client  # noqa: F401
import zipfile  # noqa: F401


def main() -> None:
    directory, entries = sys.argv[1], int(sys.argv[2])
    rng = random.Random(7)
    data = {f"key{i}": rng.randrange(1_000_000) for i in range(entries)}
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    with open(os.path.join(directory, "ready"), "w") as f:
        f.write(f"{os.getpid()}\n")
    while True:
        signal.sigwait({signal.SIGUSR1})
        with open(os.path.join(directory, "request")) as f:
            keys = f.read().split()
        if keys == ["quit"]:
            # Without freeing the dict: an exit that reads all memory would
            # count as faults of the request.
            os._exit(0)
        me = os.readlink("/proc/self")
        answer = os.path.join(directory, f"answer-{me}")
        with open(answer + ".tmp", "w") as f:
            f.write(f"{sum(data[k] for k in keys)}\n")
        os.rename(answer + ".tmp", answer)


if __name__ == "__main__":
    main()
