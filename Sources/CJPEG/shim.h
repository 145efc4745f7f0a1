#ifndef WSSS_CJPEG_SHIM_H
#define WSSS_CJPEG_SHIM_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <jpeglib.h>

// libjpeg reports errors by calling error_exit, which must not return; Swift cannot longjmp, so
// whole decode/encode calls live here and come back with a status and libjpeg's message.
struct wsss_jpeg_error {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void wsss_jpeg_error_exit(j_common_ptr cinfo) {
    struct wsss_jpeg_error *error = (struct wsss_jpeg_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, error->message);
    longjmp(error->jump, 1);
}

// Warnings (e.g. corrupt-but-decodable data) stay quiet; a failure still reports through error_exit.
static void wsss_jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

/// Decodes a JPEG file to 8-bit RGB (grey JPEGs are expanded). On success returns 0 and a malloc'd
/// buffer of width*height*3 bytes in *pixels (free it); on failure returns 1 and a message.
/// Images of more than max_pixels pixels are refused after the header is read (before anything
/// the size of the image is allocated), with *width and *height set to the declared size.
static inline int wsss_jpeg_read_rgb(const char *path, unsigned char **pixels, int *width, int *height,
                                     size_t max_pixels, char *message, size_t message_size) {
    *pixels = NULL;
    FILE *file = fopen(path, "rb");
    if (!file) { snprintf(message, message_size, "cannot open file"); return 1; }
    struct jpeg_decompress_struct cinfo;
    struct wsss_jpeg_error error;
    unsigned char *volatile buffer = NULL;
    cinfo.err = jpeg_std_error(&error.pub);
    error.pub.error_exit = wsss_jpeg_error_exit;
    error.pub.output_message = wsss_jpeg_output_message;
    error.message[0] = 0;
    if (setjmp(error.jump)) {
        snprintf(message, message_size, "%s", error.message);
        jpeg_destroy_decompress(&cinfo);
        fclose(file);
        free(buffer);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, file);
    jpeg_read_header(&cinfo, TRUE);
    if ((size_t)cinfo.image_width * cinfo.image_height > max_pixels) {
        *width = (int)cinfo.image_width;
        *height = (int)cinfo.image_height;
        snprintf(message, message_size, "image of %u x %u pixels is larger than the reader's limit of %zu pixels",
                 cinfo.image_width, cinfo.image_height, max_pixels);
        jpeg_destroy_decompress(&cinfo);
        fclose(file);
        return 1;
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * 3;
    buffer = (unsigned char *)malloc(stride * cinfo.output_height);
    if (!buffer) { snprintf(message, message_size, "out of memory"); jpeg_destroy_decompress(&cinfo); fclose(file); return 1; }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = buffer + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    *width = (int)cinfo.output_width;
    *height = (int)cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    fclose(file);
    *pixels = buffer;
    return 0;
}

/// Encodes 8-bit RGB rows to a baseline JPEG file at the given quality (1..100). Returns 0 on success.
static inline int wsss_jpeg_write_rgb(const char *path, const unsigned char *pixels, int width, int height,
                                      int quality, char *message, size_t message_size) {
    FILE *file = fopen(path, "wb");
    if (!file) { snprintf(message, message_size, "cannot create file"); return 1; }
    struct jpeg_compress_struct cinfo;
    struct wsss_jpeg_error error;
    cinfo.err = jpeg_std_error(&error.pub);
    error.pub.error_exit = wsss_jpeg_error_exit;
    error.pub.output_message = wsss_jpeg_output_message;
    error.message[0] = 0;
    if (setjmp(error.jump)) {
        snprintf(message, message_size, "%s", error.message);
        jpeg_destroy_compress(&cinfo);
        fclose(file);
        return 1;
    }
    jpeg_create_compress(&cinfo);
    jpeg_stdio_dest(&cinfo, file);
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    size_t stride = (size_t)width * 3;
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)(pixels + stride * cinfo.next_scanline);
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    if (fclose(file) != 0) { snprintf(message, message_size, "cannot finish writing file"); return 1; }
    return 0;
}
#endif
