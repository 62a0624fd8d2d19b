"""Who exited: exec, cgroup and container context joined to exit records."""
