"""What the end-to-end checks know of a running stack, whatever runs it.

`adapter` says what a check may ask of a stack (`StackTarget`); each target answers it
in a module of its own (`local`: the processes `yardarm up` supervises on this machine).
"""
