/*
 * memtouch: the demo guest's memory workload (static, no dependencies beyond libc).
 *
 *   memtouch <MiB> [pagesPerSecond]     pagesPerSecond 0 (default) = as fast as possible
 *
 * Sweeps an area of <MiB> and increments the first byte of every page, page 0 to the last, forever.
 * At any instant the first bytes of consecutive pages therefore differ by at most 1 (mod 256) in the
 * direction of the sweep: the invariant QEMU's own migration test checks on the target. On every pass it
 * also checks that each page still holds the value it wrote on the previous pass, so corruption introduced
 * by a migration is reported by the guest itself.
 *
 * Console lines (stdout, one write per line so they do not tear against the heartbeat):
 *   NOVACRON-MEMTOUCH start mib=<MiB> pages=<n> pagesPerSecond=<r> locked=<0|1>
 *   NOVACRON-MEMTOUCH pass=<n> ok                             at most every reportIntervalMs
 *   NOVACRON-MEMTOUCH CORRUPT page=<i> expected=<x> got=<y>   at most maxCorruptReportsPerPass a pass
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define reportIntervalMs 3000
/* The pacing tick: small enough to look smooth to a dirty-rate estimator, large enough for nanosleep. */
#define paceTickMs 10
#define maxCorruptReportsPerPass 16
#define maxAreaMiB (1024 * 1024)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Builds the whole line first and writes it with one write(2), so it lands on the console in one piece. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = (int)(sizeof line - 2);
  line[n++] = '\n';
  ssize_t off = 0;
  while (off < n) {
    ssize_t w = write(STDOUT_FILENO, line + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    off += w;
  }
}

static int parse_count(const char *s, unsigned long max, unsigned long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v > max) return -1;
  *out = v;
  return 0;
}

static void sleep_until_ms(uint64_t deadline) {
  struct timespec ts = { .tv_sec = (time_t)(deadline / 1000u), .tv_nsec = (long)(deadline % 1000u) * 1000000L };
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

int main(int argc, char **argv) {
  unsigned long mib = 0, rate = 0;
  if (argc < 2 || argc > 3 || parse_count(argv[1], maxAreaMiB, &mib) != 0 || mib == 0 ||
      (argc == 3 && parse_count(argv[2], 1000000000ul, &rate) != 0)) {
    fprintf(stderr, "usage: memtouch <MiB 1..%d> [pagesPerSecond, 0 = unpaced]\n", maxAreaMiB);
    return 2;
  }
  long page_size = sysconf(_SC_PAGESIZE);
  if (page_size <= 0) page_size = 4096;
  size_t bytes = (size_t)mib << 20;
  size_t pages = bytes / (size_t)page_size;

  /* MAP_POPULATE so every page is backed (zero) before the first pass checks its value. */
  unsigned char *area = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (area == MAP_FAILED) {
    fprintf(stderr, "memtouch: cannot map %lu MiB: %s\n", mib, strerror(errno));
    return 1;
  }
  /* Locked pages cannot be swapped or reclaimed, so what a migration carries is exactly what we wrote. */
  int locked = mlock(area, bytes) == 0;
  say("NOVACRON-MEMTOUCH start mib=%lu pages=%zu pagesPerSecond=%lu locked=%d", mib, pages, rate, locked);

  /* Pages touched per pacing tick; at least one, so a tiny rate still makes progress. */
  uint64_t per_tick = rate == 0 ? 0 : (rate * paceTickMs + 999u) / 1000u;
  if (rate != 0 && per_tick == 0) per_tick = 1;
  uint64_t tick_ms = rate == 0 ? 0 : (per_tick * 1000u) / rate;
  if (rate != 0 && tick_ms == 0) tick_ms = 1;

  uint64_t last_report = now_ms();
  uint64_t next_tick = last_report + tick_ms;
  uint64_t in_tick = 0;
  unsigned long long pass = 0;
  for (;;) {
    pass++;
    unsigned char expected = (unsigned char)(pass - 1);
    unsigned char next = (unsigned char)pass;
    unsigned corrupt = 0;
    for (size_t i = 0; i < pages; i++) {
      volatile unsigned char *p = area + i * (size_t)page_size;
      unsigned char got = *p;
      if (got != expected) {
        if (corrupt < maxCorruptReportsPerPass) {
          say("NOVACRON-MEMTOUCH CORRUPT page=%zu expected=%u got=%u", i, (unsigned)expected, (unsigned)got);
        }
        corrupt++;
      }
      /* Write our own value, not got+1, so one corrupt page is reported once rather than on every pass. */
      *p = next;
      if (per_tick != 0 && ++in_tick >= per_tick) {
        in_tick = 0;
        sleep_until_ms(next_tick);
        next_tick += tick_ms;
        /* After a long stall (e.g. a paused VM) resume the pace instead of bursting to catch up. */
        uint64_t now = now_ms();
        if (next_tick + 1000u < now) next_tick = now + tick_ms;
      }
    }
    uint64_t now = now_ms();
    if (corrupt == 0 && now - last_report >= reportIntervalMs) {
      say("NOVACRON-MEMTOUCH pass=%llu ok", pass);
      last_report = now;
    }
  }
}
