/* Misuse of the C API: every bad call gets its error code, none crashes. Built with
 * AddressSanitizer by `cargo xtask test` and run in the guests by tests/rxe_c_api.rs:
 *
 *     filemr-c-misuse DEVICE DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <filemr.h>

static int failures;

#define EXPECT(call, code)                                                              \
    do {                                                                                \
        int rc_ = (call);                                                               \
        char msg_[512];                                                                 \
        filemr_last_error(msg_, sizeof msg_);                                           \
        if (rc_ != (code)) {                                                            \
            fprintf(stderr, "FAIL %s:%d: %s returned %d (%s), expected %d (%s) [%s]\n", \
                    __FILE__, __LINE__, #call, rc_, strerror(rc_), (code),              \
                    strerror(code), msg_);                                              \
            failures++;                                                                 \
        } else {                                                                        \
            printf("ok   %-70s -> %s%s%s\n", #call, (code) ? strerror(code) : "0",     \
                   (code) ? ": " : "", (code) ? msg_ : "");                             \
        }                                                                               \
    } while (0)

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);              \
            failures++;                                                                 \
        } else {                                                                        \
            printf("ok   %s\n", #cond);                                                 \
        }                                                                               \
    } while (0)

static void make_file(const char *path, size_t len)
{
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0 || ftruncate(fd, (off_t)len) != 0 || close(fd) != 0) {
        perror(path);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s DEVICE DIR\n", argv[0]);
        return 2;
    }
    const char *device = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/filemr-c-misuse-%d", argv[2], (int)getpid());
    make_file(path, 65536);
    printf("filemr %s\n", filemr_version());

    filemr_manager *m = NULL, *m2 = NULL;
    filemr_region *r = NULL, *r2 = NULL;
    filemr_region_info info;
    filemr_event ev;
    filemr_cq *cq = NULL;

    /* Bad arguments to the manager. */
    EXPECT(filemr_manager_open(NULL, 0, &m), EINVAL);
    EXPECT(filemr_manager_open(device, 0, NULL), EINVAL);
    EXPECT(filemr_manager_open("no-such-device", 0, &m), ENODEV);
    EXPECT(filemr_manager_open(device, 0x80, &m), EINVAL);
    EXPECT(filemr_manager_adopt(NULL, NULL, 0, &m), EINVAL);
    EXPECT(filemr_manager_adopt(NULL, NULL, FILEMR_RESUME, &m), EINVAL);
    EXPECT(filemr_manager_open(device, 0, &m), 0);
    EXPECT(filemr_manager_open(device, 0, &m2), EBUSY);

    /* Bad registrations. */
    EXPECT(filemr_register(m, NULL, 0, 4096, FILEMR_ACCESS_READ_WRITE, &r), EINVAL);
    EXPECT(filemr_register(m, path, 0, 1 << 20, FILEMR_ACCESS_READ_WRITE, &r), EINVAL);
    EXPECT(filemr_register(m, path, 65536, 0, FILEMR_ACCESS_READ_WRITE, &r), EINVAL);
    EXPECT(filemr_register(m, "/nonexistent/file", 0, 4096, FILEMR_ACCESS_READ, &r), ENOENT);
    EXPECT(filemr_register(m, path, 0, 4096, 7, &r), EINVAL);
    EXPECT(filemr_register(m, path, 0, 4096, FILEMR_ACCESS_READ, NULL), EINVAL);
    EXPECT(filemr_register(NULL, path, 0, 4096, FILEMR_ACCESS_READ, &r), EINVAL);

    /* A good one, then misuse of it. */
    EXPECT(filemr_register(m, path, 0, 0, FILEMR_ACCESS_READ_WRITE, &r), 0);
    EXPECT(filemr_region_get_info(r, &info), 0);
    CHECK(info.len == 65536 && info.generation == 1 && info.addr != 0);
    EXPECT(filemr_region_commit(r, 60000, 10000), ERANGE);
    EXPECT(filemr_region_commit(r, SIZE_MAX, 2), EINVAL);
    EXPECT(filemr_region_commit(r, 0, 4096), 0);
    EXPECT(filemr_region_get_info(r, NULL), EINVAL);
    EXPECT(filemr_region_get_info((filemr_region *)m, &info), EBADF);
    EXPECT(filemr_region_grant(r, NULL, NULL), EINVAL);
    EXPECT(filemr_cq_adopt(m, NULL, FILEMR_CQ_SHARED, &cq), EINVAL);
    EXPECT(filemr_cq_adopt(m, NULL, 9, &cq), EINVAL);
    EXPECT(filemr_qp_adopt(m, NULL, NULL, NULL), EINVAL);
    EXPECT(filemr_manager_next_event(m, &ev), EAGAIN);
    EXPECT(filemr_manager_next_event(m, NULL), EINVAL);

    /* Double free and use after free. */
    EXPECT(filemr_region_free(r), 0);
    EXPECT(filemr_region_free(r), EBADF);
    EXPECT(filemr_region_get_info(r, &info), EBADF);
    EXPECT(filemr_region_commit(r, 0, 1), EBADF);
    EXPECT(filemr_region_free(NULL), EINVAL);
    EXPECT(filemr_grant_free(NULL), EINVAL);

    /* The error message: truncated into a small buffer, full length returned. */
    EXPECT(filemr_register(m, "/nonexistent/file", 0, 4096, FILEMR_ACCESS_READ, &r), ENOENT);
    char small[8];
    size_t full = filemr_last_error(small, sizeof small);
    CHECK(full > 7 && strlen(small) == 7);
    char whole[512];
    filemr_last_error(whole, sizeof whole);
    CHECK(strstr(whole, "filemr_register") != NULL && strstr(whole, "/nonexistent/file") != NULL);

    /* Metrics into a caller buffer: ERANGE and the size needed, then the text. */
    size_t needed = 0;
    EXPECT(filemr_manager_metrics(m, NULL, 0, &needed), ERANGE);
    CHECK(needed > 100);
    char *text = malloc(needed + 1);
    EXPECT(filemr_manager_metrics(m, text, needed + 1, &needed), 0);
    CHECK(strstr(text, "filemr_region_registration_seconds") != NULL);
    free(text);

    /* Use after the manager is closed: every handle made under it is stale. */
    EXPECT(filemr_register(m, path, 0, 4096, FILEMR_ACCESS_READ_WRITE, &r2), 0);
    int efd = -1;
    EXPECT(filemr_manager_event_fd(m, &efd), 0);
    CHECK(efd >= 0);
    EXPECT(filemr_manager_close(m), 0);
    EXPECT(filemr_region_get_info(r2, &info), EBADF);
    EXPECT(filemr_region_free(r2), EBADF);
    EXPECT(filemr_manager_close(m), EBADF);
    EXPECT(filemr_manager_next_event(m, &ev), EBADF);
    EXPECT(filemr_register(m, path, 0, 4096, FILEMR_ACCESS_READ, &r), EBADF);

    /* The lease engine and the device were released: a new manager starts. */
    EXPECT(filemr_manager_open(device, FILEMR_STAGE_ONLY | FILEMR_RESUME, &m), 0);
    EXPECT(filemr_register(m, path, 0, 4096, FILEMR_ACCESS_READ, &r), 0);
    EXPECT(filemr_region_get_info(r, &info), 0);
    CHECK(info.strategy == FILEMR_STRATEGY_STAGING);
    EXPECT(filemr_manager_close(m), 0);

    unlink(path);
    printf("misuse: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
