/* Preloaded into the trainer by benches/device-check.sh (LD_PRELOAD): sets torch's sync
 * debug mode to warn, as torch.cuda.set_sync_debug_mode("warn") does from Python, so that
 * every synchronizing CUDA operation (a blocking copy, .item(), a stream or device sync)
 * prints a warning line the script counts. The mode is a plain int (c10::cuda::WarningState,
 * L_DISABLED 0, L_WARN 1) inside libc10_cuda.so, constant-initialised, so writing it before
 * main needs no C++. Build: cc -shared -fPIC -O2 -o sync_debug.so device_check_sync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

__attribute__((constructor)) static void warn_on_sync(void) {
    void *c10_cuda = dlopen("libc10_cuda.so", RTLD_LAZY | RTLD_NOLOAD);
    int *mode = c10_cuda ? dlsym(c10_cuda, "_ZZN3c104cuda13warning_stateEvE14warning_state_") : NULL;
    if (mode) {
        *mode = 1;
        fprintf(stderr, "sync debug: warn\n");
    } else {
        fprintf(stderr, "sync debug: libc10_cuda.so's warning state not found; syncs are not counted\n");
    }
}
