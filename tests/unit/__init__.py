"""Unit tests: no root, network, broker or eBPF; they run anywhere the package installs
(`make unit`). A test that needs any of these belongs in tests/system/."""
