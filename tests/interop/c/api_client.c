/* A C program using socksng's C API (socksng.h): connect by name, a listener on the proxy's
 * outside that accepts one connection, and the proxy's capabilities as JSON. Prints one line
 * per step; exits non-zero on the first failure. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "socksng.h"

static int fail(const char *what) {
    printf("FAIL %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    const char *host = argv[1];
    int port = atoi(argv[2]);

    int fd = socksng_connect(host, (uint16_t)port);
    if (fd < 0)
        return fail("socksng_connect");
    const char req[] = "GET / HTTP/1.0\r\n\r\n";
    if (write(fd, req, sizeof req - 1) < 0)
        return fail("write");
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while ((n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = 0;
    close(fd);
    char *body = strstr(buf, "\r\n\r\n");
    printf("connect %s", body ? body + 4 : "(no body)\n");

    struct sockaddr_in pub;
    socklen_t len = sizeof pub;
    int l = socksng_listen(0, 16, (struct sockaddr *)&pub, &len);
    if (l < 0)
        return fail("socksng_listen");
    char addr[64];
    inet_ntop(AF_INET, &pub.sin_addr, addr, sizeof addr);
    printf("listening %s:%d\n", addr, ntohs(pub.sin_port));
    fflush(stdout);
    struct sockaddr_in peer;
    len = sizeof peer;
    int a = socksng_accept(l, (struct sockaddr *)&peer, &len);
    if (a < 0)
        return fail("socksng_accept");
    inet_ntop(AF_INET, &peer.sin_addr, addr, sizeof addr);
    const char hello[] = "hello from C\n";
    if (write(a, hello, sizeof hello - 1) < 0)
        return fail("write accepted");
    close(a);
    close(l);
    printf("accepted %s\n", addr);

    char json[8192];
    int j = socksng_capabilities(NULL, json, sizeof json);
    if (j < 0)
        return fail("socksng_capabilities");
    printf("capabilities %s\n", json);
    return 0;
}
