// libpng (Debian: libpng-dev, pkg-config name "libpng").
// Encoding uses the simplified png_image_* API. Decoding uses the low-level API wrapped below, because the
// simplified API converts 16-bit data as linear light and applies gAMA/sRGB/iCCP gamma, so a 16-bit grey
// sample 32*257 read as 99 instead of 32 (issue 16). libpng reports errors by longjmp; every setjmp is in these
// C functions and every longjmp lands in them, so none crosses a Swift frame.
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/// One decode in progress: the input bytes, libpng's structs and, after onestep_png_begin, the decoded layout.
typedef struct {
    const unsigned char *data;
    size_t size;
    size_t pos;
    png_structp png;
    png_infop info;
    unsigned width, height, channels; /* after the transforms: 8 bits per sample, 1-4 channels */
    int bit_depth, color_type, interlaced; /* as the file declares them */
    char message[256];
} onestep_png_reader;

static void onestep_png_read_fn(png_structp png, png_bytep out, size_t n) {
    onestep_png_reader *r = (onestep_png_reader *)png_get_io_ptr(png);
    if (n > r->size - r->pos) png_error(png, "the file ends inside a chunk (truncated)");
    memcpy(out, r->data + r->pos, n);
    r->pos += n;
}

static void onestep_png_error_fn(png_structp png, png_const_charp msg) {
    onestep_png_reader *r = (onestep_png_reader *)png_get_error_ptr(png);
    strncpy(r->message, msg ? msg : "libpng error", sizeof(r->message) - 1);
    r->message[sizeof(r->message) - 1] = 0;
    png_longjmp(png, 1);
}

static void onestep_png_warning_fn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

/// Reads the header and sets the transforms that give the samples as the PNG spec defines them, at 8 bits:
/// palette -> RGB(A), grey of 1/2/4 bits scaled to 8 (v * 255 / (2^bits - 1), exact by bit replication),
/// tRNS -> an alpha channel, 16 bits -> 8 with rounding (png_set_scale_16: round(v * 255 / 65535)),
/// interlacing undone. No gamma or colour-space conversion: gAMA, sRGB, cHRM and iCCP describe how to display
/// the samples, not what they are. Returns 1, or 0 with `message` set.
static inline int onestep_png_begin(onestep_png_reader *r) {
    r->message[0] = 0;
    r->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, r, onestep_png_error_fn, onestep_png_warning_fn);
    if (!r->png) { strcpy(r->message, "out of memory"); return 0; }
    r->info = png_create_info_struct(r->png);
    if (!r->info) { png_destroy_read_struct(&r->png, NULL, NULL); strcpy(r->message, "out of memory"); return 0; }
    if (setjmp(png_jmpbuf(r->png))) return 0;
    png_set_read_fn(r->png, r, onestep_png_read_fn);
    png_read_info(r->png, r->info);
    r->bit_depth = png_get_bit_depth(r->png, r->info);
    r->color_type = png_get_color_type(r->png, r->info);
    r->interlaced = png_get_interlace_type(r->png, r->info) != PNG_INTERLACE_NONE;
    png_set_expand(r->png);
    png_set_scale_16(r->png);
    png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);
    r->width = png_get_image_width(r->png, r->info);
    r->height = png_get_image_height(r->png, r->info);
    r->channels = png_get_channels(r->png, r->info);
    if (png_get_bit_depth(r->png, r->info) != 8 || r->channels < 1 || r->channels > 4 ||
        png_get_rowbytes(r->png, r->info) != (size_t)r->width * r->channels) {
        strcpy(r->message, "unexpected layout after expansion");
        return 0;
    }
    return 1;
}

/// Decodes every row into `out` (height * width * channels bytes, rows top to bottom). Returns 1, or 0 with
/// `message` set.
static inline int onestep_png_finish(onestep_png_reader *r, unsigned char *out) {
    png_bytep *volatile rows = (png_bytep *)malloc(sizeof(png_bytep) * (r->height ? r->height : 1));
    if (!rows) { strcpy(r->message, "out of memory"); return 0; }
    if (setjmp(png_jmpbuf(r->png))) { free(rows); return 0; }
    for (unsigned y = 0; y < r->height; y++) rows[y] = out + (size_t)y * r->width * r->channels;
    png_read_image(r->png, rows);
    png_read_end(r->png, NULL);
    free(rows);
    return 1;
}

/// Frees libpng's structs (after begin, whether or not it or finish succeeded).
static inline void onestep_png_end(onestep_png_reader *r) {
    if (r->png) png_destroy_read_struct(&r->png, r->info ? &r->info : NULL, NULL);
    r->png = NULL;
    r->info = NULL;
}
