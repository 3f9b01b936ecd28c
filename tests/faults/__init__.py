"""Fault-injection suite (issue 14): a malicious server request, malicious site replies, a killed writer, a disk
that refuses writes, nonsense arguments, a SuperNode that dies mid-round (``-m flower``), a corrupted cache. The
13-fault bad-scan corpus lives beside the data code it tests: ``tests/data/test_check.py``."""
