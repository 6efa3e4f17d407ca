#!/usr/bin/env python3
"""Relays one client connection to a broker over a connection made first.

usage: relay.py BROKER_SOCKET LISTEN_SOCKET MODE

The broker sees this script's process as its peer (the process that called
connect), whoever the client behind the relay is. MODE sets up that peer:
  plain            nothing more: the broker should serve it;
  filtered-thread  one other thread of the process runs under an
                   allow-everything seccomp filter (the main thread does not);
  connector-exits  the process that connected exits (its parent, the test,
                   leaves it a zombie), and a child it forked relays;
  filter-on-signal as plain until SIGUSR1, then as filtered-thread.
"""
import os
import select
import signal
import socket
import sys
import threading
import time

from seccomp_filter import filter_this_thread


def filter_and_sleep(done):
    """Puts this thread (only) under a filter, says so, then sleeps."""
    filter_this_thread()
    done.set()
    while True:
        time.sleep(60)


def relay(upstream, listen_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listen_path + ".tmp")
    server.listen(1)
    os.rename(listen_path + ".tmp", listen_path)  # appears once ready
    client, _ = server.accept()
    peers = {client: upstream, upstream: client}
    while True:
        readable, _, _ = select.select(list(peers), [], [])
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            peers[s].sendall(data)


broker_path, listen_path, mode = sys.argv[1:4]
# Never outlive a test that failed before its client came.
signal.alarm(120)
upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
upstream.connect(broker_path)
if mode == "filtered-thread":
    installed = threading.Event()
    threading.Thread(target=filter_and_sleep, args=(installed,), daemon=True).start()
    installed.wait()
elif mode == "connector-exits":
    parent = os.getpid()
    if os.fork() != 0:
        os._exit(0)
    signal.alarm(120)  # alarms are not inherited
    while os.getppid() == parent:
        time.sleep(0.01)
elif mode == "filter-on-signal":
    signal.signal(
        signal.SIGUSR1,
        lambda *_: threading.Thread(target=filter_and_sleep, args=(threading.Event(),), daemon=True).start(),
    )
elif mode != "plain":
    sys.exit(f"unknown mode {mode}")
relay(upstream, listen_path)
