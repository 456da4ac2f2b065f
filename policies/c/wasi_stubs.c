// Trapping definitions of the three WASI functions wasi-libc's stdio links in: `snprintf`
// and `strtod` keep a reference to `stderr` for long-double cases these policies never reach.
// Defining them here resolves the references inside the module, so the component imports
// nothing but the policy host (the trainer refuses any other import), as componentize-py's
// --stub-wasi does for Python.

#include <stdint.h>

int32_t __imported_wasi_snapshot_preview1_fd_write(int32_t fd, int32_t iovs, int32_t iovs_len, int32_t written) {
  __builtin_trap();
}

int32_t __imported_wasi_snapshot_preview1_fd_seek(int32_t fd, int64_t offset, int32_t whence, int32_t position) {
  __builtin_trap();
}

int32_t __imported_wasi_snapshot_preview1_fd_close(int32_t fd) { __builtin_trap(); }
