/* What writing a WAL frame costs the way SQLite does it, against fewer system calls.
 *
 * SQLite writes each frame of its write-ahead log with two pwrite calls: the 24-byte frame header, then
 * the page (walWriteOneFrame in sqlite3.c). This program rewrites a log of 980 frames of 4 KiB pages
 * 200 times over, as a log that restarts after each checkpoint is rewritten, three ways, and prints the
 * time a frame took each way: two pwrite calls a frame; one pwritev of both parts; and a commit's 70
 * frames (a batch of the service's writer) gathered in memory and written with one pwrite, as the
 * service's VFS does (crates/store-sqlite/src/vfs.rs; it writes at most 124 KiB a call, which this leaves
 * out).
 *
 *   gcc -O2 -o /tmp/wal-frame-write docs/bench/wal-frame-write.c && /tmp/wal-frame-write /tmp/wal-test
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "wal-test";
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    perror(path);
    return 1;
  }
  char header[24], page[4096];
  memset(header, 1, sizeof header);
  memset(page, 2, sizeof page);
  enum { FRAME = sizeof header + sizeof page, COMMIT = 70, COMMITS = 14 };
  static char gathered[COMMIT * FRAME];
  const char *ways[] = {"two pwrite", "one pwritev", "one pwrite a commit"};
  for (int way = 0; way < 3; way++) {
    double start = seconds();
    long frames = 0;
    for (int pass = 0; pass < 200; pass++) {
      off_t at = 32; /* after the log's own header */
      for (int c = 0; c < COMMITS; c++) {
        if (way == 2) {
          for (int i = 0; i < COMMIT; i++) {
            memcpy(gathered + i * FRAME, header, sizeof header);
            memcpy(gathered + i * FRAME + sizeof header, page, sizeof page);
          }
          if (pwrite(fd, gathered, sizeof gathered, at) < 0) return perror("pwrite"), 1;
          at += sizeof gathered;
          frames += COMMIT;
          continue;
        }
        for (int i = 0; i < COMMIT; i++, frames++, at += FRAME) {
          if (way == 1) {
            struct iovec parts[2] = {{header, sizeof header}, {page, sizeof page}};
            if (pwritev(fd, parts, 2, at) < 0) return perror("pwritev"), 1;
          } else if (pwrite(fd, header, sizeof header, at) < 0 ||
                     pwrite(fd, page, sizeof page, at + sizeof header) < 0) {
            return perror("pwrite"), 1;
          }
        }
      }
    }
    printf("%s: %.2f us a frame\n", ways[way], (seconds() - start) / frames * 1e6);
  }
  close(fd);
  unlink(path);
  return 0;
}
