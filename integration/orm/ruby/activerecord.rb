# ActiveRecord (Debian ruby-activerecord, ruby-pg) as its users write it,
# for phiproxy's ORM suite (integration/orm_test.go): a migration, the
# columns as ActiveRecord loads them and a schema dump at startup,
# insert_all, where(ssn: [...]) lists, joins and includes over an
# association keyed by the shared-key column, transactions with
# requires_new (a savepoint), upsert_all, find_each batches, and the
# refusals.
#
#   ruby activerecord.rb DSN phi|plain
#
# It prints one JSON object per line; the test compares the run through
# phiproxy with the run on the plaintext twin.
require 'active_record'
require 'json'
require 'stringio'

dsn, mode = ARGV
abort 'usage: ruby activerecord.rb DSN phi|plain' unless dsn && %w[phi plain].include?(mode)

ActiveRecord::Base.logger = nil
ActiveRecord::Migration.verbose = false
ActiveRecord::Base.establish_connection(dsn.sub(%r{\Apostgres://}, 'postgresql://'))

class Patient < ActiveRecord::Base
  self.table_name = 'patients'
  has_many :visits, foreign_key: :patient_ssn, primary_key: :ssn
end

class Visit < ActiveRecord::Base
  self.table_name = 'visits'
  belongs_to :patient, foreign_key: :patient_ssn, primary_key: :ssn, optional: true
end

class AddDoctors < ActiveRecord::Migration[6.1]
  def change
    create_table :doctors do |t|
      t.text :name, null: false
    end
    add_index :visits, :visited_on
    add_column :patients, :email, :text
  end
end

COLS = %w[id name ssn diagnosis notes dob active].freeze

def row(p)
  COLS.to_h { |c| v = p[c]; [c, v.is_a?(Date) ? v.iso8601 : v] }
end

def put(key, value)
  puts JSON.generate({ key => value })
  $stdout.flush
end

def sqlstate(e)
  c = e.respond_to?(:cause) && e.cause
  c.respond_to?(:result) && c.result ? c.result.error_field(PG::PG_DIAG_SQLSTATE) : e.class.name
end

# Startup: a migration (a new table, an index and a column on the PHI
# table), then the columns as ActiveRecord loads them.
AddDoctors.migrate(:up)
Patient.reset_column_information
put 'columns', Patient.columns.map { |c| [c.name, c.sql_type, c.type.to_s, c.null] }
# db/schema.rb as `rails db:schema:dump` writes it (types, indexes, check
# constraints).
dump = StringIO.new
ActiveRecord::SchemaDumper.dump(ActiveRecord::Base.connection, dump)
put 'schema.rb', dump.string.lines.map(&:rstrip).reject { |l| l.empty? || l.start_with?('#') }

seed = [
  { name: 'Ada', ssn: '111-11-1111', diagnosis: 'flu', notes: 'first visit', dob: Date.new(1980, 1, 2) },
  { name: 'Bob', ssn: '222-22-2222', diagnosis: nil, notes: "ünïcödé \"q\" 'x'", dob: Date.new(1975, 6, 30) },
  { name: 'Cy', ssn: '333-33-3333', diagnosis: 'asthma', notes: nil, dob: nil },
  { name: 'Di', ssn: '444-44-4444', diagnosis: 'flu', notes: '', dob: Date.new(2000, 2, 29) },
  { name: 'Ed', ssn: nil, diagnosis: 'none', notes: 'no ssn', dob: Date.new(1999, 12, 31) },
]
put 'insert_all', Patient.insert_all(seed, returning: %w[id ssn dob]).rows.map { |r| r.map(&:to_s) }
Visit.insert_all([
  { patient_ssn: '111-11-1111', visited_on: Date.new(2024, 1, 5), reason: 'checkup' },
  { patient_ssn: '222-22-2222', visited_on: Date.new(2024, 2, 6), reason: nil },
  { patient_ssn: '111-11-1111', visited_on: Date.new(2024, 3, 7), reason: 'follow-up' },
  { patient_ssn: '999-99-9999', visited_on: Date.new(2024, 4, 8), reason: 'walk-in' },
])
gus = Patient.create!(name: 'Gus', ssn: '777-77-7777', diagnosis: 'gout', dob: Date.new(1966, 3, 4))
put 'create!', row(gus)

put 'find_by', row(Patient.find_by(ssn: '222-22-2222'))
put 'find_by unknown', Patient.find_by(ssn: '000-00-0000')
put 'where in', Patient.where(ssn: ['111-11-1111', '444-44-4444', '000-00-0000']).order(:id).map { |p| row(p) }
put 'where nil', Patient.where(diagnosis: nil).or(Patient.where(dob: nil)).order(:id).pluck(:id)
put 'where.not', Patient.where.not(ssn: '111-11-1111').count
put 'exists?', Patient.exists?(ssn: '333-33-3333')
put 'joins', Visit.joins(:patient).order('visits.id').pluck('visits.id', 'patients.name', 'patients.ssn', 'visits.visited_on', 'visits.reason').map { |r| r.map { |v| v.is_a?(Date) ? v.iso8601 : v } }
put 'includes', Patient.includes(:visits).where(ssn: ['111-11-1111', '222-22-2222']).order(:id).map { |p| [p.name, p.visits.sort_by(&:id).map { |v| [v.id, v.visited_on.iso8601] }] }
put 'group count', Visit.group(:patient_ssn).order(Arel.sql('count(*) DESC, min(id)')).count

# A transaction with a nested one (requires_new: a savepoint) rolled back,
# and a unique violation in a savepoint.
Patient.transaction do
  Patient.where(ssn: '111-11-1111').update_all(diagnosis: 'bronchitis')
  Patient.transaction(requires_new: true) do
    Patient.where(ssn: '111-11-1111').update_all(notes: 'rolled back')
    raise ActiveRecord::Rollback
  end
  begin
    Patient.transaction(requires_new: true) { Patient.create!(name: 'Dup', ssn: '222-22-2222') }
  rescue ActiveRecord::RecordNotUnique => e
    put 'duplicate ssn', sqlstate(e)
  end
  bob = Patient.lock.find_by!(ssn: '222-22-2222')
  bob.update!(diagnosis: 'cold', dob: Date.new(1975, 7, 1))
end
put 'after transaction', Patient.where(ssn: ['111-11-1111', '222-22-2222']).order(:id).map { |p| row(p) }

# Upserts.
put 'upsert_all', Patient.upsert_all([
  { name: 'Ada', ssn: '111-11-1111', diagnosis: 'pneumonia', notes: 'upserted', dob: Date.new(1980, 1, 2) },
  { name: 'Fay', ssn: '666-66-6666', diagnosis: 'migraine', notes: 'new', dob: Date.new(1990, 9, 9) },
], unique_by: :ssn, returning: %w[id ssn diagnosis]).rows
put 'insert_all skip duplicates', Patient.insert_all([{ name: 'Dup', ssn: '333-33-3333' }], unique_by: :ssn).rows
put 'find_or_create_by', row(Patient.find_or_create_by!(ssn: '123-45-6789') { |p| p.name = 'Ivy' })
cy = Patient.find_by!(ssn: '333-33-3333')
cy.update!(diagnosis: 'asthma, mild', active: false)
put 'update_all', Patient.where(ssn: '444-44-4444').update_all(notes: 'updated', diagnosis: 'cold')
put 'delete_all visits', Visit.where(patient_ssn: '999-99-9999').delete_all

# Iteration: find_each batches by primary key.
batches = []
Patient.where(active: true).find_in_batches(batch_size: 3) { |b| batches << b.map { |p| row(p) } }
put 'find_in_batches', batches
put 'find_each', Patient.where(active: true).find_each(batch_size: 2).map(&:id)

if mode == 'phi'
  {
    'activerecord order(:ssn)' => -> { Patient.order(:ssn).to_a },
    "activerecord where('dob > ?')" => -> { Patient.where('dob > ?', Date.new(1980, 1, 1)).to_a },
    'activerecord where(dob: range)' => -> { Patient.where(dob: Date.new(1980, 1, 1)..Date.new(1990, 1, 1)).to_a },
    'activerecord arel matches (ILIKE)' => -> { Patient.where(Patient.arel_table[:ssn].matches('111%')).to_a },
  }.each do |name, q|
    begin
      q.call
      puts JSON.generate({ 'refused' => name, 'sqlstate' => 'none' })
    rescue ActiveRecord::StatementInvalid => e
      puts JSON.generate({ 'refused' => name, 'sqlstate' => sqlstate(e) })
    end
  end
end
