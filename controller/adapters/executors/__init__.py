"""Executors: one kind of target each, loaded through the `relayjob.executors` entry points."""
