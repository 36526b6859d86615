"""The native C++ runner from Python: its CMake build (android_demo/native against the pip-installed ExecuTorch) and `mtp-edge validate`."""
