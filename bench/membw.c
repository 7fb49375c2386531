// membw.c: memory read bandwidth, the ceiling on batch-1 decode (every weight is read once per token).
// Streams a buffer far larger than the last-level cache with N threads (OpenMP), summing 64-bit words (vectorised
// loads), and prints the best of several passes in GB/s (1e9 bytes/s).
//   cc -O3 -march=native -fopenmp bench/membw.c -o membw && ./membw THREADS [MIB] [PASSES]
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 1;
  const size_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
  const int passes = argc > 3 ? atoi(argv[3]) : 8;
  if (threads < 1 || mib < 64 || passes < 1) {
    fprintf(stderr, "usage: membw THREADS [MIB >= 64] [PASSES]\n");
    return 2;
  }
  const size_t n = mib * 1024 * 1024 / sizeof(uint64_t);
  uint64_t* a = aligned_alloc(64, n * sizeof(uint64_t));
  if (!a) {
    fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
    return 1;
  }
  omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) a[i] = i;  // first touch by the thread that reads the page later

  double best = 0;
  uint64_t check = 0;
  for (int p = 0; p < passes; ++p) {
    uint64_t sum = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (size_t i = 0; i < n; ++i) sum += a[i];
    const double s = omp_get_wtime() - t0;
    check += sum;
    const double gbs = n * sizeof(uint64_t) / s / 1e9;
    if (gbs > best) best = gbs;
  }
  printf("%.2f\n", best);
  fprintf(stderr, "membw: %d threads, %zu MiB, best of %d passes: %.2f GB/s (checksum %llu)\n", threads, mib, passes,
          best, (unsigned long long)(check & 0xffff));
  free(a);
  return 0;
}
