/* SPDX-License-Identifier: GPL-3.0-or-later */
/*
 * pmx-log.c - the log writer: text or JSON lines on stderr.
 *
 * One line per call, written with a single write() so lines from worker
 * threads never interleave.  Messages below the configured level are
 * dropped, except that G_MESSAGES_DEBUG still enables debug output the
 * GLib way.
 */
#include "pmx-log.h"

#include <json-glib/json-glib.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static gint log_format = PMX_LOG_TEXT;
static gint log_threshold = G_LOG_LEVEL_INFO;   /* most verbose level printed */

/* log_level_value - GLogLevelFlags for a config level word */
static GLogLevelFlags
log_level_value (const char *level)
{
  if (g_strcmp0 (level, "debug") == 0)
    return G_LOG_LEVEL_DEBUG;
  if (g_strcmp0 (level, "warning") == 0)
    return G_LOG_LEVEL_WARNING;
  if (g_strcmp0 (level, "error") == 0)
    return G_LOG_LEVEL_CRITICAL;
  return G_LOG_LEVEL_INFO;
}

/* log_level_word - the word printed for a level */
static const char *
log_level_word (GLogLevelFlags level)
{
  if (level & G_LOG_LEVEL_ERROR)
    return "fatal";
  if (level & G_LOG_LEVEL_CRITICAL)
    return "error";
  if (level & G_LOG_LEVEL_WARNING)
    return "warning";
  if (level & (G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO))
    return "info";
  return "debug";
}

/* log_stamp - now as UTC ISO 8601 with milliseconds ("2026-11-23T14:05:09.123Z");
 * this runs for every delivery, so each thread formats the date and time
 * once per second and only the milliseconds otherwise */
static void
log_stamp (GString *out)
{
  static __thread time_t cached_sec = -1;
  static __thread char cached[24];   /* "2026-11-23T14:05:09." */
  struct timespec ts;
  long ms;

  clock_gettime (CLOCK_REALTIME, &ts);
  if (ts.tv_sec != cached_sec)
    {
      struct tm tm;

      gmtime_r (&ts.tv_sec, &tm);
      g_snprintf (cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d.",
                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
      cached_sec = ts.tv_sec;
    }
  ms = ts.tv_nsec / 1000000;
  g_string_append (out, cached);
  g_string_append_c (out, (char) ('0' + ms / 100));
  g_string_append_c (out, (char) ('0' + ms / 10 % 10));
  g_string_append_c (out, (char) ('0' + ms % 10));
  g_string_append_c (out, 'Z');
}

/* "[PID]: " of this process, made by pmx_log_init() (Postmux never forks
 * and goes on logging) */
static char log_pid_text[32] = "[?]: ";

/* log_writer - GLogWriterFunc printing one line per record */
static GLogWriterOutput
log_writer (GLogLevelFlags   level,
            const GLogField *fields,
            gsize            n_fields,
            gpointer         user_data)
{
  const char *message = NULL, *domain = NULL, *queue_id = NULL, *transport = NULL, *route = NULL;
  g_autoptr(GString) stamp = g_string_sized_new (32);
  g_autoptr(GString) line = NULL;
  GLogLevelFlags masked = level & G_LOG_LEVEL_MASK;

  for (gsize i = 0; i < n_fields; i++)
    {
      const char *key = fields[i].key;
      const char *value = fields[i].length < 0 ? fields[i].value : NULL;

      if (value == NULL)
        continue;
      if (strcmp (key, "MESSAGE") == 0)
        message = value;
      else if (strcmp (key, "GLIB_DOMAIN") == 0)
        domain = value;
      else if (strcmp (key, "QUEUE_ID") == 0)
        queue_id = value;
      else if (strcmp (key, "TRANSPORT") == 0)
        transport = value;
      else if (strcmp (key, "ROUTE") == 0)
        route = value;
    }

  /* Below the configured level: dropped, unless G_MESSAGES_DEBUG asks for
   * this domain's info and debug lines. */
  if (masked > (GLogLevelFlags) g_atomic_int_get (&log_threshold)
      && (masked < G_LOG_LEVEL_INFO || g_log_writer_default_would_drop (level, domain)))
    return G_LOG_WRITER_HANDLED;

  log_stamp (stamp);
  line = g_string_sized_new (256);

  if (g_atomic_int_get (&log_format) == PMX_LOG_JSON)
    {
      g_autoptr(JsonBuilder) b = json_builder_new ();
      g_autoptr(JsonGenerator) gen = json_generator_new ();
      g_autoptr(JsonNode) root = NULL;
      g_autofree char *text = NULL;

      json_builder_begin_object (b);
      json_builder_set_member_name (b, "time");
      json_builder_add_string_value (b, stamp->str);
      json_builder_set_member_name (b, "level");
      json_builder_add_string_value (b, log_level_word (level));
      json_builder_set_member_name (b, "domain");
      json_builder_add_string_value (b, domain != NULL ? domain : "postmux");
      if (queue_id != NULL)
        {
          json_builder_set_member_name (b, "queue_id");
          json_builder_add_string_value (b, queue_id);
        }
      if (transport != NULL)
        {
          json_builder_set_member_name (b, "transport");
          json_builder_add_string_value (b, transport);
        }
      if (route != NULL)
        {
          json_builder_set_member_name (b, "route");
          json_builder_add_string_value (b, route);
        }
      json_builder_set_member_name (b, "message");
      json_builder_add_string_value (b, message != NULL ? message : "");
      json_builder_end_object (b);
      root = json_builder_get_root (b);
      json_generator_set_root (gen, root);
      text = json_generator_to_data (gen, NULL);
      g_string_append (line, text);
    }
  else
    {
      /* "STAMP DOMAIN[PID]: LEVEL: [QUEUE_ID: ]MESSAGE", without printf:
       * this runs for every delivery. */
      g_string_append_len (line, stamp->str, (gssize) stamp->len);
      g_string_append_c (line, ' ');
      g_string_append (line, domain != NULL ? domain : "postmux");
      g_string_append (line, log_pid_text);
      g_string_append (line, log_level_word (level));
      g_string_append (line, ": ");
      if (queue_id != NULL)
        {
          g_string_append (line, queue_id);
          g_string_append (line, ": ");
        }
      g_string_append (line, message != NULL ? message : "");
    }
  g_string_append_c (line, '\n');
  if (write (STDERR_FILENO, line->str, line->len) < 0)
    return G_LOG_WRITER_UNHANDLED;
  return G_LOG_WRITER_HANDLED;
}

void
pmx_log_set_level (const char *level)
{
  GLogLevelFlags value = log_level_value (level);

  g_atomic_int_set (&log_threshold, (gint) value);
  /* Code that asks before it formats a debug line (the SDK's SMTP client
   * does, per session) asks g_log_writer_default_would_drop(): say yes there
   * too when the config wants debug. */
  g_log_set_debug_enabled (value == G_LOG_LEVEL_DEBUG);
}

void
pmx_log_set_format (PmxLogFormat format)
{
  g_atomic_int_set (&log_format, (gint) format);
}

void
pmx_log_init (PmxLogFormat format,
              const char  *level)
{
  static gsize installed;

  pmx_log_set_format (format);
  pmx_log_set_level (level);
  if (g_once_init_enter (&installed))
    {
      g_snprintf (log_pid_text, sizeof log_pid_text, "[%d]: ", (int) getpid ());
      g_log_set_writer_func (log_writer, NULL, NULL);
      g_once_init_leave (&installed, 1);
    }
}

void
pmx_log_delivery_text (GLogLevelFlags level,
                       const char    *queue_id,
                       const char    *transport,
                       const char    *route,
                       const char    *message)
{
  GLogField fields[6];
  gsize n = 0;

  fields[n++] = (GLogField) { "GLIB_DOMAIN", G_LOG_DOMAIN, -1 };
  fields[n++] = (GLogField) { "PRIORITY", level & G_LOG_LEVEL_CRITICAL ? "3" : level & G_LOG_LEVEL_WARNING ? "4" : "6", -1 };
  fields[n++] = (GLogField) { "MESSAGE", message, -1 };
  if (queue_id != NULL)
    fields[n++] = (GLogField) { "QUEUE_ID", queue_id, -1 };
  if (transport != NULL)
    fields[n++] = (GLogField) { "TRANSPORT", transport, -1 };
  if (route != NULL)
    fields[n++] = (GLogField) { "ROUTE", route, -1 };
  g_log_structured_array (level, fields, n);
}

void
pmx_log_delivery (GLogLevelFlags level,
                  const char    *queue_id,
                  const char    *transport,
                  const char    *route,
                  const char    *format,
                  ...)
{
  g_autofree char *message = NULL;
  va_list args;

  va_start (args, format);
  message = g_strdup_vprintf (format, args);
  va_end (args);
  pmx_log_delivery_text (level, queue_id, transport, route, message);
}
