// libcurl (Debian: libcurl4-openssl-dev, pkg-config name "libcurl").
// curl_easy_setopt / curl_multi_setopt / curl_easy_getinfo are variadic, which Swift cannot call;
// these typed static inline wrappers give Swift one entry point per argument type.
#include <curl/curl.h>
#include <errno.h>
#include <sys/epoll.h>

static inline CURLcode onestep_easy_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode onestep_easy_setopt_ptr(CURL *h, CURLoption o, const void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode onestep_easy_setopt_str(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode onestep_easy_setopt_off(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode onestep_easy_setopt_write_cb(CURL *h, size_t (*cb)(char *, size_t, size_t, void *)) {
    return curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, cb);
}
static inline CURLcode onestep_easy_setopt_header_cb(CURL *h, size_t (*cb)(char *, size_t, size_t, void *)) {
    return curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, cb);
}
static inline CURLcode onestep_easy_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode onestep_easy_getinfo_double(CURL *h, CURLINFO i, double *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode onestep_easy_getinfo_off(CURL *h, CURLINFO i, curl_off_t *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode onestep_easy_getinfo_ptr(CURL *h, CURLINFO i, void **v) { return curl_easy_getinfo(h, i, v); }
static inline CURLMcode onestep_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl_multi_setopt(m, o, v); }
static inline CURLMcode onestep_multi_setopt_ptr(CURLM *m, CURLMoption o, void *v) { return curl_multi_setopt(m, o, v); }
// The event-driven (curl_multi_socket_action) interface: libcurl says which sockets to watch and when to call back.
static inline CURLMcode onestep_multi_setopt_socket_cb(CURLM *m, int (*cb)(CURL *, curl_socket_t, int, void *, void *)) {
    return curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, cb);
}
static inline CURLMcode onestep_multi_setopt_timer_cb(CURLM *m, int (*cb)(CURLM *, long, void *)) {
    return curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, cb);
}
// epoll for that interface, here because Swift's Glibc module leaves out <sys/epoll.h> and struct epoll_event is
// packed on x86-64: these take and return plain ints, in libcurl's terms (CURL_POLL_* in, CURL_CSELECT_* out).
static inline int onestep_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
static inline int onestep_epoll_watch(int epfd, int fd, int what) {
    if (what == CURL_POLL_REMOVE) return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    struct epoll_event e = {0};
    e.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
    e.data.fd = fd;
    int r = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &e);
    if (r != 0 && errno == ENOENT) r = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
    return r;
}
static inline int onestep_epoll_wait(int epfd, int *fds, int *curl_events, int max, int timeout_ms) {
    struct epoll_event ready[256];
    int n = epoll_wait(epfd, ready, max < 256 ? max : 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        unsigned ev = ready[i].events;
        fds[i] = ready[i].data.fd;
        curl_events[i] = ((ev & EPOLLIN) ? CURL_CSELECT_IN : 0) | ((ev & EPOLLOUT) ? CURL_CSELECT_OUT : 0)
                       | ((ev & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
    }
    return n;
}
// The built-in HTTP/1.1 client (loadtest NativeHTTP.swift) watches its own sockets edge-triggered, each tagged
// with a 64-bit token (slot and connection generation) instead of the fd, so an event for a socket closed and
// reopened in the same batch is recognised as stale. Events out: 1 readable, 2 writable, 4 error or hang-up.
static inline int onestep_epoll_add_token(int epfd, int fd, unsigned long long token) {
    struct epoll_event e = {0};
    e.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    e.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
}
static inline int onestep_epoll_wait_tokens(int epfd, unsigned long long *tokens, int *events, int max, int timeout_ms) {
    struct epoll_event ready[256];
    int n = epoll_wait(epfd, ready, max < 256 ? max : 256, timeout_ms);
    for (int i = 0; i < n; i++) {
        unsigned ev = ready[i].events;
        tokens[i] = ready[i].data.u64;
        events[i] = ((ev & EPOLLIN) ? 1 : 0) | ((ev & EPOLLOUT) ? 2 : 0) | ((ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) ? 4 : 0);
    }
    return n;
}
// CURLMsg holds its result in an anonymous union; these read it without Swift touching the union.
static inline int onestep_msg_is_done(const CURLMsg *m) { return m->msg == CURLMSG_DONE; }
static inline CURLcode onestep_msg_result(const CURLMsg *m) { return m->data.result; }
