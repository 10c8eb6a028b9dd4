/* The smallest filemr program: register a file, print events until a writer has come and
 * gone (the region is rebuilt), then free everything. docs/c-api.md shows it.
 *
 *     filemr-c-minimal DEVICE FILE        (then, elsewhere: truncate -s +0 FILE)
 */
#include <poll.h>
#include <stdio.h>

#include <filemr.h>

static int fail(const char *what)
{
    char msg[256];
    filemr_last_error(msg, sizeof msg);
    fprintf(stderr, "%s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv)
{
    filemr_manager *m;
    filemr_region *r;
    if (argc != 3)
        return fprintf(stderr, "usage: %s DEVICE FILE\n", argv[0]), 2;
    if (filemr_manager_open(argv[1], 0, &m))
        return fail("open");
    if (filemr_register(m, argv[2], 0, 0 /* to EOF */, FILEMR_ACCESS_READ_WRITE, &r))
        return fail("register");

    int fd, rebuilt = 0;
    filemr_manager_event_fd(m, &fd); /* add it to your epoll set */
    while (!rebuilt) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        poll(&p, 1, -1);
        filemr_event ev;
        while (filemr_manager_next_event(m, &ev) == 0) {
            printf("event %u on region %llu\n", ev.kind, (unsigned long long)ev.region);
            rebuilt |= ev.kind == FILEMR_EVENT_REBUILT;
        }
    }
    filemr_region_free(r); /* commits, deregisters, releases the lease */
    filemr_manager_close(m);
    return 0;
}
