"""System tests: root, eBPF, mosquitto, network namespaces, the nspawn fleet (fleet/) and the qemu
VM (vm/). The fixtures they share are in conftest.py; under CI=true a missing requirement fails."""
