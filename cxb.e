Usage: zoo export [OPTIONS] RUN
Try 'zoo export --help' for help.

Error: Invalid value for 'RUN': Directory 'run1' does not exist.
B rc=2
