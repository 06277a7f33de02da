/* LD_PRELOAD shim counting libgomp parallel regions (GOMP_parallel calls); read with gompcount_get(). */
#define _GNU_SOURCE
#include <dlfcn.h>
static long long n_parallel = 0;
long long gompcount_get(void) { return n_parallel; }
void gompcount_reset(void) { n_parallel = 0; }
typedef void (*par_t)(void (*)(void*), void*, unsigned, unsigned);
void GOMP_parallel(void (*fn)(void*), void *data, unsigned nt, unsigned flags) {
  static par_t real = 0;
  if (!real) { void *h = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD); if (!h) h = dlopen("libgomp.so.1", RTLD_NOW); real = (par_t)dlsym(h, "GOMP_parallel"); }
  __atomic_add_fetch(&n_parallel, 1, __ATOMIC_RELAXED);
  real(fn, data, nt, flags);
}
