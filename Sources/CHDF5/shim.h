#ifndef WSSS_CHDF5_SHIM_H
#define WSSS_CHDF5_SHIM_H
#include <hdf5.h>

// HDF5 exposes its native types and defaults as macros over globals that are only valid after
// H5open(); Swift cannot import such macros, so each gets a function.
static inline hid_t wsss_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t wsss_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t wsss_H5E_DEFAULT(void) { return H5E_DEFAULT; }
static inline hsize_t wsss_H5S_UNLIMITED(void) { return H5S_UNLIMITED; }
static inline hid_t wsss_H5P_FILE_ACCESS(void) { H5open(); return H5P_FILE_ACCESS; }
static inline hid_t wsss_H5P_DATASET_CREATE(void) { H5open(); return H5P_DATASET_CREATE; }
static inline hid_t wsss_H5P_FILE_CREATE(void) { H5open(); return H5P_FILE_CREATE; }
static inline hid_t wsss_H5P_GROUP_CREATE(void) { H5open(); return H5P_GROUP_CREATE; }
static inline hid_t wsss_H5P_LINK_CREATE(void) { H5open(); return H5P_LINK_CREATE; }
static inline hid_t wsss_H5T_NATIVE_UINT8(void) { H5open(); return H5T_NATIVE_UINT8; }
static inline hid_t wsss_H5T_NATIVE_INT32(void) { H5open(); return H5T_NATIVE_INT32; }
static inline hid_t wsss_H5T_NATIVE_INT64(void) { H5open(); return H5T_NATIVE_INT64; }
static inline hid_t wsss_H5T_NATIVE_FLOAT(void) { H5open(); return H5T_NATIVE_FLOAT; }
static inline hid_t wsss_H5T_NATIVE_DOUBLE(void) { H5open(); return H5T_NATIVE_DOUBLE; }
static inline hid_t wsss_H5T_IEEE_F16LE(void) {
    // HDF5 1.10 has no predefined half type: derive one from IEEE single (1 sign, 5 exp, 10 mantissa).
    H5open();
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
    return t;
}
static inline hid_t wsss_H5T_C_S1(void) { H5open(); return H5T_C_S1; }
static inline size_t wsss_H5T_VARIABLE(void) { return H5T_VARIABLE; }
static inline unsigned wsss_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned wsss_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }
static inline unsigned wsss_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned wsss_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }
static inline void wsss_H5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
#endif
